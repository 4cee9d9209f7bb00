// One attention problem held in small padded tiles (N tokens x hd channels, N <= 256): the
// math shared by the CPU window-attention and temporal-attention kernels. Compiled per
// CPU_CAPABILITY: include inside the kernel's CPU_CAPABILITY namespace, after small_gemm.h
// and vec_exp.h.
//
// Scores are C * tau with C = q . k (dot product, tau = scale) or C = q^ . k^, q^ = q / |q|
// (cosine, tau = the clamped exp(logit_scale)). The caller fills Q, K, V (and dO, O for the
// backward) row by row (rows padded to Dp with zeros), supplies the additive terms of each
// logit row (bias, masks; -inf in the padding columns j >= N), and reads O / dQ, dK, dV.
// The forward keeps one log-sum-exp per row; the backward recomputes P from it.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

template <typename acc_t>
struct AttentionTile {
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t V = Vec::size();
  static constexpr double kNormEps = 1e-12;  // F.normalize's eps

  int64_t N, hd, Np, Dp;  // Np, Dp: N and hd rounded up to whole vectors
  bool cosine;
  std::vector<acc_t> Q, K, Vv, KT, C, P, O, norm_q, norm_k;
  std::vector<acc_t> dO, VT, dP, dQ, dK, dV, D;

  AttentionTile(int64_t n, int64_t d, bool cos, bool backward)
      : N(n), hd(d), Np(round_up(n, V)), Dp(round_up(d, V)), cosine(cos) {
    for (auto* b : {&Q, &K, &Vv, &O}) b->assign(N * Dp, acc_t(0));
    KT.assign(hd * Np, acc_t(0));
    C.assign(N * Np, acc_t(0));
    P.assign(N * Np, acc_t(0));
    norm_q.assign(N, acc_t(1));
    norm_k.assign(N, acc_t(1));
    if (backward) {
      for (auto* b : {&dO, &dQ, &dK, &dV}) b->assign(N * Dp, acc_t(0));
      dP.assign(N * Np, acc_t(0));
      VT.assign(hd * Np, acc_t(0));
      D.assign(N, acc_t(0));
    }
  }

  // n contiguous values, in vectors with a masked tail (memcpy per short row costs more).
  static void copy(acc_t* d, const acc_t* s, int64_t n) {
    int64_t c = 0;
    for (; c + V <= n; c += V) Vec::loadu(s + c).store(d + c);
    if (c < n) Vec::loadu(s + c, n - c).store(d + c, n - c);
  }

  static acc_t hsum(const Vec& v) {
    return at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, v);
  }

  static void transpose(const acc_t* src, int64_t rows, int64_t cols, int64_t lds, acc_t* dst, int64_t ldd) {
    int64_t r = 0;
    if constexpr (std::is_same_v<acc_t, float>) {
#if defined(CPU_CAPABILITY_AVX512)
      at::vec::transpose_mxn<float>(src, lds, dst, ldd, int(rows), int(cols));  // masked 16x16 blocks
      return;
#elif defined(CPU_CAPABILITY_AVX2)
      // whole 8x8 blocks in registers (ATen's runtime-size transpose is scalar on AVX2)
      for (; r + 8 <= rows; r += 8) {
        int64_t c = 0;
        for (; c + 8 <= cols; c += 8)
          at::vec::transpose_mxn<float, 8, 8>(src + r * lds + c, lds, dst + c * ldd + r, ldd);
        for (; c < cols; ++c)
          for (int64_t i = r; i < r + 8; ++i) dst[c * ldd + i] = src[i * lds + c];
      }
#endif
    }
    for (; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }

  // x^ = x / max(|x|, eps) row by row, in place, keeping |x| for the backward.
  void normalize_rows(acc_t* X, acc_t* norm) const {
    for (int64_t t = 0; t < N; ++t) {
      acc_t* x = X + t * Dp;
      Vec ss(0);
      for (int64_t c = 0; c < Dp; c += V) ss = at::vec::fmadd(Vec::loadu(x + c), Vec::loadu(x + c), ss);
      norm[t] = std::sqrt(hsum(ss));
      const Vec inv(acc_t(1) / std::max<acc_t>(norm[t], acc_t(kNormEps)));
      for (int64_t c = 0; c < Dp; c += V) (Vec::loadu(x + c) * inv).store(x + c);
      // a NaN norm made the zero padding NaN, and gather() rewrites only the real channels:
      // the next window's scores would read it
      std::fill(x + hd, x + Dp, acc_t(0));
    }
  }

  // After Q, K are loaded: normalise (cosine) and C = Q K^T.
  void scores() {
    if (cosine) {
      normalize_rows(Q.data(), norm_q.data());
      normalize_rows(K.data(), norm_k.data());
    }
    transpose(K.data(), N, hd, Dp, KT.data(), Np);
    gemm_nn<acc_t>(N, Np, hd, Q.data(), Dp, KT.data(), Np, C.data(), Np, false);
  }

  // P = softmax over each row of C * tau + add(i, j, s) (add returns s plus the row's additive
  // terms for columns j..j+V, -inf for j >= N). Forward: writes lse_out. Backward (lse_in
  // given): P = exp(logits - lse). A row with no finite maximum (every logit -inf, or a NaN
  // or +inf among them) gets NaN probabilities and lse, as the reference's softmax gives: it
  // never keeps another row's or window's values.
  template <typename AddFn>
  void probabilities(acc_t tau, AddFn&& add, const acc_t* lse_in, acc_t* lse_out) {
    const Vec vt(tau);
    constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
    constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    for (int64_t i = 0; i < N; ++i) {
      acc_t* p = P.data() + i * Np;
      Vec vmax(kNegInf);
      for (int64_t j = 0; j < Np; j += V) {
        const Vec s = add(i, j, Vec::loadu(C.data() + i * Np + j) * vt);
        s.store(p + j);
        vmax = at::vec::maximum(vmax, s);
      }
      // the backward's lse is NaN exactly where the forward's row was
      const acc_t m = lse_in ? lse_in[i]
                             : at::vec::vec_reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
      if (!(m > kNegInf && m < kInf)) {  // NaN fails too
        std::fill(p, p + Np, nan);
        if (lse_out) lse_out[i] = nan;
        continue;
      }
      const Vec vm(m);
      Vec vsum(0);
      for (int64_t j = 0; j < Np; j += V) {
        const Vec e = fast_exp(Vec::loadu(p + j) - vm);
        e.store(p + j);
        vsum = vsum + e;
      }
      if (!lse_in) {
        const acc_t s = hsum(vsum);
        const Vec inv(acc_t(1) / s);
        for (int64_t j = 0; j < Np; j += V) (Vec::loadu(p + j) * inv).store(p + j);
        lse_out[i] = m + std::log(s);
      }
    }
  }

  void output() { gemm_nn<acc_t>(N, Dp, N, P.data(), Np, Vv.data(), Dp, O.data(), Dp, false); }

  // After probabilities() (recomputed) with dO and O loaded: dV, dQ, dK. Adds the score
  // gradients dS into dbias (N x Np, when given, for a bias gradient); returns sum(dS * C)
  // when want_c_sum (for the scale's gradient), else 0.
  double backward(acc_t tau, acc_t* dbias, bool want_c_sum) {
    for (int64_t i = 0; i < N; ++i) {
      Vec s(0);
      for (int64_t c = 0; c < Dp; c += V) s = at::vec::fmadd(Vec::loadu(dO.data() + i * Dp + c), Vec::loadu(O.data() + i * Dp + c), s);
      D[i] = hsum(s);
    }
    gemm_tn<acc_t>(N, Dp, N, P.data(), Np, dO.data(), Dp, dV.data(), Dp, false);  // dV = P^T dO
    transpose(Vv.data(), N, hd, Dp, VT.data(), Np);  // dP = dO V^T
    gemm_nn<acc_t>(N, Np, hd, dO.data(), Dp, VT.data(), Np, dP.data(), Np, false);
    const Vec vt(tau);
    Vec c_sum(0);
    for (int64_t i = 0; i < N; ++i) {  // dS = P (dP - D); dC = dS tau, kept in dP (P is 0 past N)
      const Vec di(D[i]);
      for (int64_t j = 0; j < Np; j += V) {
        const Vec ds = Vec::loadu(P.data() + i * Np + j) * (Vec::loadu(dP.data() + i * Np + j) - di);
        if (dbias) (Vec::loadu(dbias + i * Np + j) + ds).store(dbias + i * Np + j);
        if (want_c_sum) c_sum = at::vec::fmadd(ds, Vec::loadu(C.data() + i * Np + j), c_sum);
        (ds * vt).store(dP.data() + i * Np + j);
      }
    }
    gemm_nn<acc_t>(N, Dp, N, dP.data(), Np, K.data(), Dp, dQ.data(), Dp, false);  // dq^ = dC k^
    gemm_tn<acc_t>(N, Dp, N, dP.data(), Np, Q.data(), Dp, dK.data(), Dp, false);  // dk^ = dC^T q^
    if (cosine) {
      unnormalize_grad(dQ.data(), Q.data(), norm_q.data());
      unnormalize_grad(dK.data(), K.data(), norm_k.data());
    }
    return want_c_sum ? double(hsum(c_sum)) : 0.0;
  }

  // d(x / max(|x|, eps)): (g - x^ (x^ . g)) / |x| where |x| > eps, g / eps otherwise.
  void unnormalize_grad(acc_t* G, const acc_t* Xn, const acc_t* norm) const {
    for (int64_t t = 0; t < N; ++t) {
      acc_t* gr = G + t * Dp;
      const acc_t* x = Xn + t * Dp;
      if (norm[t] > acc_t(kNormEps)) {
        Vec s(0);
        for (int64_t c = 0; c < Dp; c += V) s = at::vec::fmadd(Vec::loadu(x + c), Vec::loadu(gr + c), s);
        const Vec dot(hsum(s)), inv(acc_t(1) / norm[t]);
        for (int64_t c = 0; c < Dp; c += V)
          ((Vec::loadu(gr + c) - Vec::loadu(x + c) * dot) * inv).store(gr + c);
      } else {
        const Vec inv(acc_t(1 / kNormEps));
        for (int64_t c = 0; c < Dp; c += V) (Vec::loadu(gr + c) * inv).store(gr + c);
      }
    }
  }
};
