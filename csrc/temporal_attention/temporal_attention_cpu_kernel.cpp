// Fused multi-head attention over many short sequences on the CPU (compiled once per
// CPU_CAPABILITY): one task per sequence, its rows staged from q, k, v in any layout with
// contiguous channels (walked in address order), every head computed from the staged rows,
// the key padding mask added as -inf, and no limit on the number of sequences.
#include <algorithm>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <initializer_list>
#include <limits>
#include <vector>

#include "float_dispatch.h"
#include "temporal_attention/temporal_attention.h"

namespace skysense::CPU_CAPABILITY {

#include "small_gemm.h"
#include "vec_exp.h"
#include "attention_tile.h"

namespace {

using at::vec::Vectorized;

template <typename scalar_t>
struct Kernel {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  using Tile = AttentionTile<acc_t>;

  const TemporalAttentionInputs& in;
  int64_t Np;
  std::vector<acc_t> key_add;  // (S, Np): 0, -inf for masked keys and padding columns

  explicit Kernel(const TemporalAttentionInputs& inputs) : in(inputs), Np(round_up(inputs.T, Vec::size())) {}

  const acc_t* key_row(int64_t s, std::vector<acc_t>& buf) const {
    constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
    const acc_t* m = in.key_mask.defined() ? in.key_mask.const_data_ptr<acc_t>() + s * in.T : nullptr;
    for (int64_t j = 0; j < Np; ++j) buf[j] = j >= in.T ? kNegInf : m ? m[j] : acc_t(0);
    return buf.data();
  }

  // One sequence's rows, walked in address order (for views of one projection: every head
  // of token 0, then of token 1, ... — one contiguous block of memory per sequence, which the
  // hardware prefetchers stream; head by head the rows sit a projection row apart, a stride
  // no prefetcher follows, and each row costs a memory round trip). f(h, t, row offset).
  template <typename F>
  void rows_of(const at::Tensor& t, int64_t s, F&& f) const {
    const int64_t sh = t.stride(1), st = t.stride(2), base = s * t.stride(0);
    if (sh <= st) {
      for (int64_t i = 0; i < in.T; ++i)
        for (int64_t h = 0; h < in.heads; ++h) f(h, i, base + h * sh + i * st);
    } else {
      for (int64_t h = 0; h < in.heads; ++h)
        for (int64_t i = 0; i < in.T; ++i) f(h, i, base + h * sh + i * st);
    }
  }

  // src (S, heads, T, hd; channels contiguous), sequence s -> buf (heads, T, Dp)
  void stage_in(const at::Tensor& src, int64_t s, acc_t* buf, int64_t Dp) const {
    const scalar_t* p = src.const_data_ptr<scalar_t>();
    rows_of(src, s, [&](int64_t h, int64_t t, int64_t off) {
      acc_t* d = buf + (h * in.T + t) * Dp;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        Tile::copy(d, p + off, in.hd);
      } else {
        for (int64_t c = 0; c < in.hd; ++c) d[c] = static_cast<acc_t>(p[off + c]);
      }
    });
  }

  // buf (heads, T, Dp) -> dst (S, heads, T, hd; any strides but contiguous channels), sequence s
  void stage_out(const acc_t* buf, int64_t s, int64_t Dp, at::Tensor& dst) const {
    scalar_t* p = dst.mutable_data_ptr<scalar_t>();
    rows_of(dst, s, [&](int64_t h, int64_t t, int64_t off) {
      const acc_t* r = buf + (h * in.T + t) * Dp;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        Tile::copy(p + off, r, in.hd);
      } else {
        for (int64_t c = 0; c < in.hd; ++c) p[off + c] = static_cast<scalar_t>(r[c]);
      }
    });
  }

  // One task per sequence: its inputs staged (heads, T, Dp) in address order, every head
  // computed from the staged rows, the results staged and written back in address order.
  // body(tile, s, h, key row, staged inputs beyond q k v, staged outputs) fills the outputs.
  template <typename Body>
  void tasks(bool backward, std::initializer_list<const at::Tensor*> extra_in,
             std::initializer_list<at::Tensor*> outs, Body&& body) const {
    at::parallel_for(0, in.S, 1, [&](int64_t s0, int64_t s1) {
      Tile tile(in.T, in.hd, false, backward);
      const int64_t Dp = tile.Dp, per = in.heads * in.T * Dp, n_in = 3 + int64_t(extra_in.size());
      std::vector<acc_t> keys(Np), staged_in(n_in * per), staged_out(int64_t(outs.size()) * per);
      const at::Tensor* srcs[8] = {&in.q, &in.k, &in.v};
      int64_t n = 3;
      for (const at::Tensor* t : extra_in) srcs[n++] = t;
      for (int64_t s = s0; s < s1; ++s) {
        for (int64_t i = 0; i < n_in; ++i) stage_in(*srcs[i], s, staged_in.data() + i * per, Dp);
        const acc_t* kr = key_row(s, keys);
        for (int64_t h = 0; h < in.heads; ++h) {
          const int64_t at = h * in.T * Dp;
          std::copy_n(staged_in.data() + at, in.T * Dp, tile.Q.data());
          std::copy_n(staged_in.data() + per + at, in.T * Dp, tile.K.data());
          std::copy_n(staged_in.data() + 2 * per + at, in.T * Dp, tile.Vv.data());
          for (int64_t t = 0; t < in.T; ++t) {  // an ignored key reads as 0: a NaN there stays out
            if (kr[t] == -std::numeric_limits<acc_t>::infinity()) {
              std::fill_n(tile.K.data() + t * Dp, in.hd, acc_t(0));
              std::fill_n(tile.Vv.data() + t * Dp, in.hd, acc_t(0));
            }
          }
          tile.scores();
          body(tile, s, h, kr, staged_in.data() + 3 * per + at, per, staged_out.data() + at);
        }
        int64_t i = 0;
        for (at::Tensor* t : outs) stage_out(staged_out.data() + (i++) * per, s, Dp, *t);
      }
    });
  }

  void forward(at::Tensor& out, at::Tensor& lse) const {
    acc_t* l = lse.mutable_data_ptr<acc_t>();
    tasks(false, {}, {&out}, [&](Tile& tile, int64_t s, int64_t h, const acc_t* keys, const acc_t*, int64_t,
                                 acc_t* o) {
      tile.probabilities(static_cast<acc_t>(in.scale), [&](int64_t, int64_t j, Vec x) { return x + Vec::loadu(keys + j); },
                         nullptr, l + (s * in.heads + h) * in.T);
      tile.output();
      std::copy_n(tile.O.data(), in.T * tile.Dp, o);
    });
  }

  void backward(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& grad_out, at::Tensor& dq,
                at::Tensor& dk, at::Tensor& dv) const {
    const acc_t* l = lse.const_data_ptr<acc_t>();
    tasks(true, {&grad_out, &out}, {&dq, &dk, &dv}, [&](Tile& tile, int64_t s, int64_t h, const acc_t* keys,
                                                       const acc_t* more, int64_t per, acc_t* o) {
      tile.probabilities(static_cast<acc_t>(in.scale), [&](int64_t, int64_t j, Vec x) { return x + Vec::loadu(keys + j); },
                         l + (s * in.heads + h) * in.T, nullptr);
      const int64_t n = in.T * tile.Dp;
      std::copy_n(more, n, tile.dO.data());
      std::copy_n(more + per, n, tile.O.data());
      tile.backward(static_cast<acc_t>(in.scale), nullptr, false);
      std::copy_n(tile.dQ.data(), n, o);
      std::copy_n(tile.dK.data(), n, o + per);
      std::copy_n(tile.dV.data(), n, o + 2 * per);
    });
  }
};

}  // namespace

void temporal_attention_fwd_kernel(const TemporalAttentionInputs& in, at::Tensor& out, at::Tensor& lse) {
  dispatch_float(in.q.scalar_type(), "temporal_attention", [&](auto tag) { Kernel<decltype(tag)>(in).forward(out, lse); });
}

void temporal_attention_bwd_kernel(const TemporalAttentionInputs& in, const at::Tensor& out, const at::Tensor& lse,
                                   const at::Tensor& grad_out, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  dispatch_float(in.q.scalar_type(), "temporal_attention", [&](auto tag) { Kernel<decltype(tag)>(in).backward(out, lse, grad_out, dq, dk, dv); });
}

}  // namespace skysense::CPU_CAPABILITY
