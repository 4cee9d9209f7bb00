// Fused log-domain Sinkhorn-Knopp on the CPU (compiled once per CPU_CAPABILITY).
//
// Q = exp(S/eps + u_n + v_k). The reference alternates a column update
//   v = log b - LSE_n(S/eps + u)           and a row update   u = log a - LSE_k(S/eps + v).
// Reading S once per update would cost 2 passes and 2 exponentials per element per
// iteration. Here:
//  * the first column update (from u = 0) is an online column log-sum-exp over row blocks;
//  * each row pass also sums the Q it has just normalised per column,
//    colmass_k = sum_n exp(S/eps + u_n + v_k), which gives the next column update exactly:
//    v_k <- v_k + log b_k - log colmass_k. After a column update every column of
//    exp(S/eps + v) sums to b_k, so rows sum to at most sum(b) and colmass_k >= b_k/sum(b):
//    these linear-domain sums are well scaled, while u and v stay in the log domain;
//  * the same bound, exp(S_nk/eps + v_k) <= b_k, gives every row a safe shift max_k log b_k
//    without a max sweep (rows whose mass is far below it are redone with their exact max);
//  * float32/float64: the first row pass writes Q1 = exp(S/eps + u + v) into the output and
//    later iterations only rescale it, Q = diag(alpha) Q1 diag(beta): no exponentials and
//    no reads of S. The scaling is absorbed back into v with a fresh log-domain pass if it
//    ever grows past e^30 (Schmitzer's stabilisation), so values that underflowed in Q1
//    can never matter. bfloat16/float16 outputs cannot hold Q1 precisely, so there every
//    iteration is a log-domain pass over S.
// u is never stored; extra memory is O(threads * K + N).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "float_dispatch.h"
#include "sinkhorn/sinkhorn.h"

namespace skysense::CPU_CAPABILITY {

#include "vec_exp.h"
#include "vec_stream.h"

namespace {

using at::vec::Vectorized;

constexpr int64_t kRowBlock = 32;    // rows per block: column partial sums flush to double
constexpr double kAbsorb = 30.0;     // |log beta| beyond which the scaling is absorbed into v
constexpr double kRowFloor = 1e-20;  // a row sum below this under the shared shift is redone
constexpr double kLog2e = 1.4426950408889634074;
constexpr int64_t kStreamBytes = int64_t(64) << 20;  // outputs above this bypass the caches

// Full vectors, then one partial vector: f(k, n) with n lanes valid.
template <typename Vec, typename F>
inline void for_chunks(int64_t K, F&& f) {
  int64_t k = 0;
  for (; k + Vec::size() <= K; k += Vec::size()) f(k, int64_t(Vec::size()));
  if (k < K) f(k, K - k);
}
template <typename Vec>
inline Vec load(const typename Vec::value_type* p, int64_t n) {
  return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
}
template <typename Vec>
inline void store(const Vec& v, typename Vec::value_type* p, int64_t n) {
  if (n == Vec::size()) v.store(p);
  else v.store(p, n);
}
// Lanes past n replaced by `fill` (so they cannot win a max or add to a sum).
template <typename Vec>
inline Vec valid(const Vec& v, int64_t n, typename Vec::value_type fill) {
  return n == Vec::size() ? v : Vec::set(Vec(fill), v, n);
}
template <typename Vec>
inline typename Vec::value_type hsum(const Vec& v) {
  return at::vec::vec_reduce_all<typename Vec::value_type>([](Vec& a, Vec& b) { return a + b; }, v);
}
template <typename Vec>
inline typename Vec::value_type hmax(const Vec& v) {
  return at::vec::vec_reduce_all<typename Vec::value_type>(
      [](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

// Rows as acc_t: the input itself when it already is acc_t, else converted into `buf`.
template <typename scalar_t, typename acc_t>
inline const acc_t* as_acc(const scalar_t* src, int64_t count, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    buf.resize(count);
    for (int64_t i = 0; i < count; ++i) buf[i] = static_cast<acc_t>(src[i]);
    return buf.data();
  }
}

// Per-thread column sums: float blocks of kRowBlock rows flushed into double.
template <typename acc_t>
struct ColumnSums {
  std::vector<std::vector<double>> per_thread;
  ColumnSums(bool on, int64_t K) : per_thread(on ? at::get_num_threads() : 0, std::vector<double>(K, 0.0)) {}
  bool on() const { return !per_thread.empty(); }
  std::vector<double> total() const {
    std::vector<double> t(per_thread.empty() ? 0 : per_thread[0].size(), 0.0);
    for (const auto& c : per_thread)
      for (size_t k = 0; k < t.size(); ++k) t[k] += c[k];
    return t;  // empty when off: nothing accumulated
  }
};
template <typename acc_t>
struct BlockAccumulator {
  std::vector<acc_t> block;
  double* dst;
  int64_t rows = 0;
  BlockAccumulator(ColumnSums<acc_t>& sums, int64_t K)
      : block(sums.on() ? K : 0, acc_t(0)), dst(sums.on() ? sums.per_thread[at::get_thread_num()].data() : nullptr) {}
  void end_row(bool last) {
    if (++rows == kRowBlock || last) {
      for (size_t k = 0; k < block.size(); ++k) {
        dst[k] += block[k];
        block[k] = 0;
      }
      rows = 0;
    }
  }
};

template <typename scalar_t>
struct Problem {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  static constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();

  const scalar_t* S;
  const acc_t* log_a;
  const acc_t* log_b;
  scalar_t* out;
  int64_t N, K;
  acc_t inv_eps;
  std::vector<acc_t> v;  // column potentials
  std::atomic<int32_t> status{kSinkhornOk};

  bool ok() const { return status.load() == kSinkhornOk; }

  // v_k = log b_k - LSE_n(S_nk / eps): online column log-sum-exp over blocks of rows. This
  // pass sees every score, so it is also where NaN / +inf are detected.
  void first_column_update() {
    const int T = at::get_num_threads();
    std::vector<std::vector<double>> cmax(T, std::vector<double>(K, -std::numeric_limits<double>::infinity()));
    std::vector<std::vector<double>> csum(T, std::vector<double>(K, 0.0));
    at::parallel_for(0, N, kRowBlock, [&](int64_t r0, int64_t r1) {
      const int tid = at::get_thread_num();
      std::vector<double>& M = cmax[tid];
      std::vector<double>& Ssum = csum[tid];
      std::vector<acc_t> conv, bmax(K), bsum(K);
      for (int64_t b0 = r0; b0 < r1; b0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, r1 - b0);
        const acc_t* x = as_acc(S + b0 * K, rows * K, conv);
        std::fill(bmax.begin(), bmax.end(), -kInf);
        for (int64_t r = 0; r < rows; ++r)
          for_chunks<Vec>(K, [&](int64_t k, int64_t n) {
            store(at::vec::maximum(load<Vec>(bmax.data() + k, n), load<Vec>(x + r * K + k, n)), bmax.data() + k, n);
          });
        bool bad = false;
        for (int64_t k = 0; k < K; ++k) {
          const double m = static_cast<double>(bmax[k]) * inv_eps;
          bad |= std::isnan(m) || m == std::numeric_limits<double>::infinity();
          if (m > M[k]) {
            Ssum[k] *= std::exp(M[k] - m);  // rare once the max has settled
            M[k] = m;
          }
          // the shift for this block; any finite value while the column is all -inf
          bmax[k] = std::isinf(M[k]) ? acc_t(0) : static_cast<acc_t>(M[k]);
        }
        if (bad) {
          status.store(kSinkhornNonFinite);
          return;
        }
        std::fill(bsum.begin(), bsum.end(), acc_t(0));
        for (int64_t k = 0; k < K; ++k) bmax[k] *= kLog2e;  // exponents in base 2
        const Vec ve(inv_eps * kLog2e);
        for (int64_t r = 0; r < rows; ++r)
          for_chunks<Vec>(K, [&](int64_t k, int64_t n) {
            const Vec e = fast_exp2(at::vec::fmsub(load<Vec>(x + r * K + k, n), ve, load<Vec>(bmax.data() + k, n)));
            store(load<Vec>(bsum.data() + k, n) + e, bsum.data() + k, n);
          });
        for (int64_t k = 0; k < K; ++k) Ssum[k] += bsum[k];
      }
    });
    if (!ok()) return;
    for (int64_t k = 0; k < K; ++k) {
      double m = -std::numeric_limits<double>::infinity();
      for (int t = 0; t < T; ++t) m = std::max(m, cmax[t][k]);
      double s = 0;
      for (int t = 0; t < T; ++t) s += csum[t][k] == 0 ? 0 : csum[t][k] * std::exp(cmax[t][k] - m);
      if (!(s > 0)) {  // a finite max with no mass: the scale exceeded the accumulation type's precision
        status.store(std::isfinite(m) ? kSinkhornPrecision : kSinkhornEmptyColumn);
        return;
      }
      v[k] = static_cast<acc_t>(static_cast<double>(log_b[k]) - (m + std::log(s)));
    }
  }

  // z_k = exp(x_k/eps + v_k - shift) for one row, with w = (v - shift) log2(e) precomputed;
  // returns sum_k z_k. exact_max: the shift is this row's own max instead (returns -1 if
  // the row is all -inf).
  acc_t row_exp(const acc_t* x, acc_t* z, const acc_t* w, bool exact_max) const {
    const Vec ve(inv_eps * kLog2e);
    Vec vm(0);
    if (exact_max) {
      Vec vmax(-kInf);
      for_chunks<Vec>(K, [&](int64_t k, int64_t n) {
        vmax = at::vec::maximum(vmax, valid(at::vec::fmadd(load<Vec>(x + k, n), ve, load<Vec>(w + k, n)), n, -kInf));
      });
      const acc_t m = hmax(vmax);
      if (!(m > -kInf)) return acc_t(-1);
      vm = Vec(m);
    }
    Vec vsum(0);
    for_chunks<Vec>(K, [&](int64_t k, int64_t n) {
      const Vec e = fast_exp2(at::vec::fmadd(load<Vec>(x + k, n), ve, load<Vec>(w + k, n)) - vm);
      store(e, z + k, n);
      vsum = vsum + valid(e, n, acc_t(0));
    });
    return hsum(vsum);
  }

  // Log-domain row update u_n = log a_n - LSE_k(S_nk/eps + v_k) for every row; writes Q when
  // asked and returns Q's column sums when asked (empty otherwise).
  std::vector<double> row_pass(bool write, bool accumulate) {
    ColumnSums<acc_t> sums(accumulate, K);
    const bool stream = write && N * K * int64_t(sizeof(scalar_t)) >= kStreamBytes;
    acc_t shared_shift = -kInf;  // exp(S/eps + v) <= b_k after a column update
    for (int64_t k = 0; k < K; ++k) shared_shift = std::max(shared_shift, log_b[k]);
    std::vector<acc_t> w(K);
    for (int64_t k = 0; k < K; ++k) w[k] = (v[k] - shared_shift) * kLog2e;
    at::parallel_for(0, N, kRowBlock, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> conv, z(K);
      BlockAccumulator<acc_t> acc(sums, K);
      for (int64_t n = r0; n < r1; ++n) {
        const acc_t* x = as_acc(S + n * K, K, conv);
        acc_t s = row_exp(x, z.data(), w.data(), false);
        if (!(s >= kRowFloor)) s = row_exp(x, z.data(), w.data(), true);  // little mass: exact max
        if (s < 0) {
          status.store(kSinkhornEmptyRow);
          return;
        }
        const acc_t scale = static_cast<acc_t>(std::exp(static_cast<double>(log_a[n]))) / s;
        const Vec vs(scale);
        scalar_t* o = out + n * K;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          const bool plain_write = write && !stream;
          if (accumulate || plain_write)
            for_chunks<Vec>(K, [&](int64_t k, int64_t cnt) {
              const Vec q = load<Vec>(z.data() + k, cnt) * vs;
              if (accumulate) store(load<Vec>(acc.block.data() + k, cnt) + q, acc.block.data() + k, cnt);
              if (plain_write) store(q, o + k, cnt);
            });
          if (write && stream) stream_scaled_row(o, z.data(), scale, K);
        } else {
          if (accumulate)
            for_chunks<Vec>(K, [&](int64_t k, int64_t cnt) {
              store(load<Vec>(acc.block.data() + k, cnt) + load<Vec>(z.data() + k, cnt) * vs, acc.block.data() + k, cnt);
            });
          if (write)
            for (int64_t k = 0; k < K; ++k) o[k] = static_cast<scalar_t>(z[k] * scale);
        }
        if (accumulate) acc.end_row(n + 1 == r1);
      }
      if (stream) stream_fence();
    });
    return sums.total();
  }

  // sum_k x_k y_k over one row, in four independent accumulators (one FMA chain would wait
  // out the FMA latency at every vector).
  acc_t dot(const acc_t* x, const acc_t* y) const {
    constexpr int64_t W = Vec::size();
    Vec d0(0), d1(0), d2(0), d3(0);
    int64_t k = 0;
    for (; k + 4 * W <= K; k += 4 * W) {
      d0 = at::vec::fmadd(Vec::loadu(x + k), Vec::loadu(y + k), d0);
      d1 = at::vec::fmadd(Vec::loadu(x + k + W), Vec::loadu(y + k + W), d1);
      d2 = at::vec::fmadd(Vec::loadu(x + k + 2 * W), Vec::loadu(y + k + 2 * W), d2);
      d3 = at::vec::fmadd(Vec::loadu(x + k + 3 * W), Vec::loadu(y + k + 3 * W), d3);
    }
    for (; k < K; k += W) {
      const int64_t cnt = std::min(W, K - k);
      d0 = at::vec::fmadd(load<Vec>(x + k, cnt), load<Vec>(y + k, cnt), d0);
    }
    return hsum((d0 + d1) + (d2 + d3));
  }

  // Scaling-domain row pass over Q1 (held in `out`), Q = diag(alpha) Q1 diag(beta):
  // alpha_n = a_n / sum_k Q1_nk beta_k; returns colsum_k = sum_n alpha_n Q1_nk when asked
  // (colmass_k = beta_k colsum_k) and writes Q in place when `apply`.
  std::vector<double> scaling_row_pass(const std::vector<acc_t>& beta, bool accumulate, bool apply,
                                       acc_t* alpha) {
    ColumnSums<acc_t> sums(accumulate, K);
    at::parallel_for(0, N, kRowBlock, [&](int64_t r0, int64_t r1) {
      BlockAccumulator<acc_t> acc(sums, K);
      for (int64_t n = r0; n < r1; ++n) {
        acc_t* q = reinterpret_cast<acc_t*>(out) + n * K;
        const acc_t al = static_cast<acc_t>(std::exp(static_cast<double>(log_a[n]))) / dot(q, beta.data());
        if (alpha) alpha[n] = al;
        const Vec va(al);
        if (accumulate && apply) {
          for_chunks<Vec>(K, [&](int64_t k, int64_t cnt) {
            const Vec qk = load<Vec>(q + k, cnt);
            store(at::vec::fmadd(qk, va, load<Vec>(acc.block.data() + k, cnt)), acc.block.data() + k, cnt);
            store(qk * va * load<Vec>(beta.data() + k, cnt), q + k, cnt);
          });
        } else if (accumulate) {
          for_chunks<Vec>(K, [&](int64_t k, int64_t cnt) {
            store(at::vec::fmadd(load<Vec>(q + k, cnt), va, load<Vec>(acc.block.data() + k, cnt)), acc.block.data() + k,
                  cnt);
          });
        } else if (apply) {
          for_chunks<Vec>(K, [&](int64_t k, int64_t cnt) {
            store(load<Vec>(q + k, cnt) * va * load<Vec>(beta.data() + k, cnt), q + k, cnt);
          });
        }
        if (accumulate) acc.end_row(n + 1 == r1);
      }
    });
    return sums.total();
  }

  // Q = alpha_n Q1_nk beta_k in place (convergence mode, after the last scaling pass).
  void apply_scaling(const std::vector<acc_t>& alpha, const std::vector<acc_t>& beta) {
    at::parallel_for(0, N, kRowBlock, [&](int64_t r0, int64_t r1) {
      for (int64_t n = r0; n < r1; ++n) {
        acc_t* q = reinterpret_cast<acc_t*>(out) + n * K;
        const Vec va(alpha[n]);
        for_chunks<Vec>(K, [&](int64_t k, int64_t cnt) {
          store(load<Vec>(q + k, cnt) * va * load<Vec>(beta.data() + k, cnt), q + k, cnt);
        });
      }
    });
  }

  // sum_k |colmass_k - b_k| / sum_k b_k: the convergence criterion.
  double marginal_error(const std::vector<double>& colmass) const {
    double err = 0, tot = 0;
    for (int64_t k = 0; k < K; ++k) {
      const double bk = std::exp(static_cast<double>(log_b[k]));
      err += std::abs(colmass[k] - bk);
      tot += bk;
    }
    return err / tot;
  }

  // Runs the iterations; returns the number done.
  int64_t run(int64_t num_iters, double tol) {
    v.assign(K, acc_t(0));
    first_column_update();
    if (!ok()) return 0;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      return run_scaling(num_iters, tol);
    } else {
      return run_log(num_iters, tol);
    }
  }

  int64_t run_log(int64_t num_iters, double tol) {
    for (int64_t t = 0; t < num_iters; ++t) {
      const bool last = t + 1 == num_iters;
      // Fixed count: only the last pass writes Q. Convergence mode: every pass writes, since
      // any pass may turn out to be the last.
      const std::vector<double> colmass = row_pass(/*write=*/last || tol > 0, /*accumulate=*/!last || tol > 0);
      if (!ok() || colmass.empty()) return t + 1;
      const double err = marginal_error(colmass);
      for (int64_t k = 0; k < K; ++k) {
        const double cm = std::max(colmass[k], std::numeric_limits<double>::min());
        v[k] = static_cast<acc_t>(static_cast<double>(v[k]) + static_cast<double>(log_b[k]) - std::log(cm));
      }
      if (tol > 0 && err <= tol) return t + 1;
    }
    return num_iters;
  }

  int64_t run_scaling(int64_t num_iters, double tol) {
    std::vector<acc_t> beta(K, acc_t(1)), alpha(tol > 0 ? N : 0, acc_t(1));
    bool fresh = true;  // next pass is a log-domain pass that writes Q1 (alpha = beta = 1)
    for (int64_t t = 0; t < num_iters; ++t) {
      const bool last = t + 1 == num_iters;
      const bool accumulate = !last || tol > 0;
      std::vector<double> colmass;
      if (fresh) {
        colmass = row_pass(/*write=*/true, accumulate);
        if (!ok()) return t + 1;
        std::fill(beta.begin(), beta.end(), acc_t(1));
        std::fill(alpha.begin(), alpha.end(), acc_t(1));
        fresh = false;
      } else {
        colmass = scaling_row_pass(beta, accumulate, /*apply=*/last && tol == 0, tol > 0 ? alpha.data() : nullptr);
        for (size_t k = 0; k < colmass.size(); ++k) colmass[k] *= beta[k];
      }
      if (colmass.empty()) return t + 1;  // the last pass of a fixed count wrote Q
      if (tol > 0 && (last || marginal_error(colmass) <= tol)) {
        apply_scaling(alpha, beta);
        return t + 1;
      }
      // column update: beta_k <- beta_k b_k / colmass_k
      double worst = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double cm = std::max(colmass[k], std::numeric_limits<double>::min());
        const double nb = static_cast<double>(beta[k]) * std::exp(static_cast<double>(log_b[k])) / cm;
        beta[k] = static_cast<acc_t>(nb);
        worst = std::max(worst, std::abs(std::log(nb)));
      }
      if (worst > kAbsorb) {
        for (int64_t k = 0; k < K; ++k) v[k] = static_cast<acc_t>(static_cast<double>(v[k]) + std::log(static_cast<double>(beta[k])));
        fresh = true;
      }
    }
    return num_iters;
  }
};

template <typename scalar_t>
void run_batch(const at::Tensor& scores, const at::Tensor& log_a, const at::Tensor& log_b, double epsilon,
               int64_t num_iters, double tol, at::Tensor& out, at::Tensor& iters, at::Tensor& status) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = scores.size(0), N = scores.size(1), K = scores.size(2);
  const scalar_t* S = scores.const_data_ptr<scalar_t>();
  const acc_t* la = log_a.const_data_ptr<acc_t>();
  const acc_t* lb = log_b.const_data_ptr<acc_t>();
  scalar_t* Q = out.mutable_data_ptr<scalar_t>();
  int64_t* it = iters.mutable_data_ptr<int64_t>();
  int32_t* st = status.mutable_data_ptr<int32_t>();
  auto one = [&](int64_t b) {
    Problem<scalar_t> p;
    p.S = S + b * N * K;
    p.log_a = la + b * N;
    p.log_b = lb + b * K;
    p.out = Q + b * N * K;
    p.N = N;
    p.K = K;
    p.inv_eps = static_cast<acc_t>(1.0 / epsilon);
    it[b] = p.run(num_iters, tol);
    st[b] = p.status.load();
  };
  // Many small problems: one problem per thread (the inner parallel_for then runs inline).
  // Few large ones: problems in turn, each split over rows.
  if (B > 1 && N * K <= (int64_t(1) << 20)) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) one(b);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) one(b);
  }
}

}  // namespace

void sinkhorn_cpu_kernel(const at::Tensor& scores, const at::Tensor& log_a, const at::Tensor& log_b,
                         double epsilon, int64_t num_iters, double tol, at::Tensor& out, at::Tensor& iters,
                         at::Tensor& status) {
  dispatch_float(scores.scalar_type(), "sinkhorn", [&](auto tag) {
    run_batch<decltype(tag)>(scores, log_a, log_b, epsilon, num_iters, tol, out, iters, status);
  });
}

}  // namespace skysense::CPU_CAPABILITY
