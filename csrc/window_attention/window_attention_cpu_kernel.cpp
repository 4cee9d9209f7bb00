// Fused shifted-window attention on the CPU (compiled once per CPU_CAPABILITY).
//
// One task per (image, window, head): the window's tokens are gathered straight from the
// spatial (B, H, W, heads, hd) layout, with the cyclic shift and the zero padding folded
// into the index map, into small padded tiles that stay in L1/L2; scores, bias, shift mask
// (from token regions, never materialised), softmax and the product with V run there; the
// result is scattered back. Nothing of size B x windows x N x N is ever written: the
// forward keeps one log-sum-exp per query row for the backward, which recomputes the
// probabilities (as flash attention does).
//
// Scores are C * tau with C = q . k (V1, tau = scale) or C = q^ . k^ with q^ = q / |q|
// (SwinV2 cosine, tau = exp(min(logit_scale, log 100))), so one code path serves both.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>
#include <vector>

#include "float_dispatch.h"
#include "window_attention/window_attention.h"

namespace skysense::CPU_CAPABILITY {

#include "small_gemm.h"
#include "vec_exp.h"
#include "attention_tile.h"

namespace {

using at::vec::Vectorized;

// Where each token of window w lives in its image (row-major H x W index, -1 for padding),
// and its region of the rolled map (tokens of different regions are masked when shifted).
void window_tokens(const WindowGeometry& g, int64_t w, std::vector<int64_t>& offset, std::vector<int32_t>& region) {
  const int64_t wy = w / g.nWw, wx = w % g.nWw;
  offset.resize(g.N);
  region.resize(g.N);
  for (int64_t t = 0; t < g.N; ++t) {
    const int64_t y = wy * g.wh + t / g.ww, x = wx * g.ww + t % g.ww;
    const int64_t oy = (y + g.sh) % g.Hp, ox = (x + g.sw) % g.Wp;
    offset[t] = (oy < g.H && ox < g.W) ? oy * g.W + ox : -1;
    const int ry = g.sh == 0 ? 0 : int(y >= g.Hp - g.wh) + int(y >= g.Hp - g.sh);
    const int rx = g.sw == 0 ? 0 : int(x >= g.Wp - g.ww) + int(x >= g.Wp - g.sw);
    region[t] = ry * 3 + rx;
  }
}

template <typename scalar_t>
struct Kernel {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  static constexpr int64_t V = Vec::size();
  static constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();

  const WindowAttentionInputs& in;
  const WindowGeometry& g;
  int64_t Np, Dp;                   // N and hd rounded up to whole vectors
  std::vector<acc_t> bias_p;        // (heads, N, Np): bias, -inf in the padding columns
  std::vector<acc_t> mask_p;        // (M, N, Np) or empty
  std::vector<acc_t> tau;           // (heads,) score scale
  bool cosine;

  explicit Kernel(const WindowAttentionInputs& inputs) : in(inputs), g(inputs.g) {
    Np = round_up(g.N, V);
    Dp = round_up(g.hd, V);
    cosine = in.logit_scale.defined();
    bias_p.assign(g.heads * g.N * Np, acc_t(0));
    const acc_t* bias = in.bias.defined() ? in.bias.const_data_ptr<acc_t>() : nullptr;
    for (int64_t h = 0; h < g.heads; ++h)
      for (int64_t i = 0; i < g.N; ++i)
        for (int64_t j = 0; j < Np; ++j)
          bias_p[(h * g.N + i) * Np + j] = j >= g.N ? kNegInf : bias ? bias[(h * g.N + i) * g.N + j] : acc_t(0);
    if (in.mask.defined()) {
      const int64_t M = in.mask.size(0);
      const acc_t* m = in.mask.const_data_ptr<acc_t>();
      mask_p.assign(M * g.N * Np, acc_t(0));
      for (int64_t w = 0; w < M; ++w)
        for (int64_t i = 0; i < g.N; ++i)
          for (int64_t j = 0; j < g.N; ++j) mask_p[(w * g.N + i) * Np + j] = m[(w * g.N + i) * g.N + j];
    }
    tau.resize(g.heads);
    for (int64_t h = 0; h < g.heads; ++h)
      tau[h] = cosine ? static_cast<acc_t>(std::exp(std::min<double>(in.logit_scale.const_data_ptr<acc_t>()[h], kLogitScaleMax)))
                      : static_cast<acc_t>(in.scale);
  }

  using Tile = AttentionTile<acc_t>;

  // Per-thread state: the attention tile and the current window's token map.
  struct Tiles : Tile {
    std::vector<int64_t> offset;
    std::vector<int32_t> region;
    std::vector<acc_t> region_f;
    Tiles(const Kernel& k, bool backward) : Tile(k.g.N, k.g.hd, k.cosine, backward), region_f(k.Np, acc_t(0)) {}
  };

  // Rows of src (B, H, W, heads, hd; any strides but a contiguous last dim) for the
  // tokens of this window and head into dst (N x Dp, padding columns left at 0).
  void gather(const at::Tensor& src, int64_t b, int64_t h, const std::vector<int64_t>& offset, acc_t* dst) const {
    const scalar_t* base = src.const_data_ptr<scalar_t>() + b * src.stride(0) + h * src.stride(3);
    const int64_t sy = src.stride(1), sx = src.stride(2);
    for (int64_t t = 0; t < g.N; ++t) {
      acc_t* d = dst + t * Dp;
      if (offset[t] < 0) {
        std::fill(d, d + g.hd, acc_t(0));
        continue;
      }
      const scalar_t* s = base + (offset[t] / g.W) * sy + (offset[t] % g.W) * sx;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        Tile::copy(d, s, g.hd);
      } else {
        for (int64_t c = 0; c < g.hd; ++c) d[c] = static_cast<acc_t>(s[c]);
      }
    }
  }

  // The tokens' rows of src (N x Dp) into dst (contiguous like q); padding tokens dropped.
  void scatter(const acc_t* src, int64_t b, int64_t h, const std::vector<int64_t>& offset, scalar_t* dst) const {
    scalar_t* img = dst + b * g.H * g.W * g.heads * g.hd;
    for (int64_t t = 0; t < g.N; ++t) {
      if (offset[t] < 0) continue;
      scalar_t* d = img + (offset[t] * g.heads + h) * g.hd;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        Tile::copy(d, src + t * Dp, g.hd);
      } else {  // (bf16 / fp16 outputs)
        for (int64_t c = 0; c < g.hd; ++c) d[c] = static_cast<scalar_t>(src[t * Dp + c]);
      }
    }
  }

  static void transpose(const acc_t* src, int64_t rows, int64_t cols, int64_t lds, acc_t* dst, int64_t ldd) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }

  // Loads q, k, v of one task into the tile and forms the scores.
  void load(Tiles& t, int64_t b, int64_t w, int64_t h) const {
    window_tokens(g, w, t.offset, t.region);
    gather(in.q, b, h, t.offset, t.Q.data());
    gather(in.k, b, h, t.offset, t.K.data());
    gather(in.v, b, h, t.offset, t.Vv.data());
    t.scores();
  }

  // Softmax with this window's bias, shift mask (from token regions) and mask.
  void probabilities(Tiles& t, int64_t b, int64_t w, int64_t h, const acc_t* lse_in, acc_t* lse_out) const {
    const bool shifted = g.sh != 0 || g.sw != 0;
    for (int64_t j = 0; j < g.N; ++j) t.region_f[j] = acc_t(t.region[j]);
    const acc_t* mask_w = mask_p.empty() ? nullptr : mask_p.data() + ((b * g.nW + w) % in.mask.size(0)) * g.N * Np;
    t.probabilities(tau[h], [&](int64_t i, int64_t j, Vec s) {
      s = s + Vec::loadu(bias_p.data() + (h * g.N + i) * Np + j);
      if (shifted)
        s = s + Vec::blendv(Vec(0), Vec(acc_t(kWindowMaskValue)),
                            Vec::loadu(t.region_f.data() + j) != Vec(t.region_f[i]));
      if (mask_w) s = s + Vec::loadu(mask_w + i * Np + j);
      return s;
    }, lse_in, lse_out);
  }

  void forward(at::Tensor& out, at::Tensor& lse) {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    acc_t* l = lse.mutable_data_ptr<acc_t>();
    at::parallel_for(0, g.B * g.nW * g.heads, 1, [&](int64_t t0, int64_t t1) {
      Tiles t(*this, false);
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t h = task % g.heads, bw = task / g.heads, w = bw % g.nW, b = bw / g.nW;
        load(t, b, w, h);
        probabilities(t, b, w, h, nullptr, l + task * g.N);
        t.output();
        scatter(t.O.data(), b, h, t.offset, o);
      }
    });
  }

  void backward(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& grad_out, at::Tensor& dq,
                at::Tensor& dk, at::Tensor& dv, at::Tensor& dlogit, at::Tensor& dbias) {
    const acc_t* l = lse.const_data_ptr<acc_t>();
    const int T = at::get_num_threads();
    const bool want_bias = dbias.defined(), want_logit = dlogit.defined();
    // per thread: d bias (heads x N x Np) and d logit sums (heads)
    std::vector<std::vector<acc_t>> acc_bias(T);
    std::vector<std::vector<double>> acc_logit(T);
    at::parallel_for(0, g.B * g.nW * g.heads, 1, [&](int64_t t0, int64_t t1) {
      const int tid = at::get_thread_num();
      std::vector<acc_t>& db = acc_bias[tid];
      std::vector<double>& dl = acc_logit[tid];
      if (want_bias && db.empty()) db.assign(g.heads * g.N * Np, acc_t(0));
      if (want_logit && dl.empty()) dl.assign(g.heads, 0.0);
      Tiles t(*this, true);
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t h = task % g.heads, bw = task / g.heads, w = bw % g.nW, b = bw / g.nW;
        load(t, b, w, h);
        probabilities(t, b, w, h, l + task * g.N, nullptr);
        gather(grad_out, b, h, t.offset, t.dO.data());
        gather(out, b, h, t.offset, t.O.data());
        const double c_sum = t.backward(tau[h], want_bias ? db.data() + h * g.N * Np : nullptr, want_logit);
        if (want_logit) dl[h] += c_sum;
        scatter(t.dQ.data(), b, h, t.offset, dq.mutable_data_ptr<scalar_t>());
        scatter(t.dK.data(), b, h, t.offset, dk.mutable_data_ptr<scalar_t>());
        scatter(t.dV.data(), b, h, t.offset, dv.mutable_data_ptr<scalar_t>());
      }
    });
    if (want_bias) {
      acc_t* o = dbias.mutable_data_ptr<acc_t>();
      for (int64_t hi = 0; hi < g.heads * g.N; ++hi)
        for (int64_t j = 0; j < g.N; ++j) {
          double s = 0;
          for (const auto& a : acc_bias)
            if (!a.empty()) s += a[hi * Np + j];
          o[hi * g.N + j] = static_cast<acc_t>(s);
        }
    }
    if (want_logit) {
      acc_t* o = dlogit.mutable_data_ptr<acc_t>();
      const acc_t* ls = in.logit_scale.const_data_ptr<acc_t>();
      for (int64_t h = 0; h < g.heads; ++h) {
        double s = 0;
        for (const auto& a : acc_logit)
          if (!a.empty()) s += a[h];
        // d tau / d logit_scale = tau below the clamp, 0 above it
        o[h] = ls[h] < kLogitScaleMax ? static_cast<acc_t>(s * tau[h]) : acc_t(0);
      }
    }
  }
};

}  // namespace

void window_attention_fwd_kernel(const WindowAttentionInputs& in, at::Tensor& out, at::Tensor& lse) {
  dispatch_float(in.q.scalar_type(), "window_attention", [&](auto tag) {
    Kernel<decltype(tag)> k(in);
    k.forward(out, lse);
  });
}

void window_attention_bwd_kernel(const WindowAttentionInputs& in, const at::Tensor& out, const at::Tensor& lse,
                                 const at::Tensor& grad_out, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv,
                                 at::Tensor& dlogit, at::Tensor& dbias) {
  dispatch_float(in.q.scalar_type(), "window_attention", [&](auto tag) {
    Kernel<decltype(tag)> k(in);
    k.backward(out, lse, grad_out, dq, dk, dv, dlogit, dbias);
  });
}

}  // namespace skysense::CPU_CAPABILITY
