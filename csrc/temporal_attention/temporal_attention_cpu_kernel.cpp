// Fused multi-head attention over many short sequences on the CPU (compiled once per
// CPU_CAPABILITY): one task per (sequence, head), tiles gathered by stride from q, k, v in
// any layout with contiguous channels, the key padding mask added as -inf, and no limit on
// the number of sequences.
#include <algorithm>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

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

  // (T x hd) rows of src (S, heads, T, hd; channels contiguous) into dst (T x Dp)
  void gather(const at::Tensor& src, int64_t s, int64_t h, acc_t* dst, int64_t Dp) const {
    const scalar_t* base = src.const_data_ptr<scalar_t>() + s * src.stride(0) + h * src.stride(1);
    const int64_t st = src.stride(2);
    for (int64_t t = 0; t < in.T; ++t) {
      const scalar_t* r = base + t * st;
      acc_t* d = dst + t * Dp;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        Tile::copy(d, r, in.hd);
      } else {
        for (int64_t c = 0; c < in.hd; ++c) d[c] = static_cast<acc_t>(r[c]);
      }
    }
  }

  // into dst (S, heads, T, hd; any strides but contiguous channels)
  void scatter(const acc_t* src, int64_t s, int64_t h, int64_t Dp, at::Tensor& dst) const {
    scalar_t* base = dst.mutable_data_ptr<scalar_t>() + s * dst.stride(0) + h * dst.stride(1);
    for (int64_t t = 0; t < in.T; ++t) {
      scalar_t* d = base + t * dst.stride(2);
      const acc_t* r = src + t * Dp;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        Tile::copy(d, r, in.hd);
      } else {
        for (int64_t c = 0; c < in.hd; ++c) d[c] = static_cast<scalar_t>(r[c]);
      }
    }
  }

  template <typename Body>
  void tasks(bool backward, Body&& body) const {
    at::parallel_for(0, in.S * in.heads, 1, [&](int64_t t0, int64_t t1) {
      Tile tile(in.T, in.hd, false, backward);
      std::vector<acc_t> keys(Np);
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t s = task / in.heads, h = task % in.heads;
        gather(in.q, s, h, tile.Q.data(), tile.Dp);
        gather(in.k, s, h, tile.K.data(), tile.Dp);
        gather(in.v, s, h, tile.Vv.data(), tile.Dp);
        const acc_t* kr = key_row(s, keys);
        for (int64_t t = 0; t < in.T; ++t) {  // an ignored key reads as 0: a NaN there stays out
          if (kr[t] == -std::numeric_limits<acc_t>::infinity()) {
            std::fill_n(tile.K.data() + t * tile.Dp, in.hd, acc_t(0));
            std::fill_n(tile.Vv.data() + t * tile.Dp, in.hd, acc_t(0));
          }
        }
        tile.scores();
        body(tile, s, h, kr);
      }
    });
  }

  void forward(at::Tensor& out, at::Tensor& lse) const {
    acc_t* l = lse.mutable_data_ptr<acc_t>();
    tasks(false, [&](Tile& tile, int64_t s, int64_t h, const acc_t* keys) {
      tile.probabilities(static_cast<acc_t>(in.scale), [&](int64_t, int64_t j, Vec x) { return x + Vec::loadu(keys + j); },
                         nullptr, l + (s * in.heads + h) * in.T);
      tile.output();
      scatter(tile.O.data(), s, h, tile.Dp, out);
    });
  }

  void backward(const at::Tensor& out, const at::Tensor& lse, const at::Tensor& grad_out, at::Tensor& dq,
                at::Tensor& dk, at::Tensor& dv) const {
    const acc_t* l = lse.const_data_ptr<acc_t>();
    tasks(true, [&](Tile& tile, int64_t s, int64_t h, const acc_t* keys) {
      tile.probabilities(static_cast<acc_t>(in.scale), [&](int64_t, int64_t j, Vec x) { return x + Vec::loadu(keys + j); },
                         l + (s * in.heads + h) * in.T, nullptr);
      gather(grad_out, s, h, tile.dO.data(), tile.Dp);
      gather(out, s, h, tile.O.data(), tile.Dp);
      tile.backward(static_cast<acc_t>(in.scale), nullptr, false);
      scatter(tile.dQ.data(), s, h, tile.Dp, dq);
      scatter(tile.dK.data(), s, h, tile.Dp, dk);
      scatter(tile.dV.data(), s, h, tile.Dp, dv);
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
