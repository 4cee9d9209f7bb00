// Temporal (per-pixel, short-sequence) attention: shared declarations of the op's pieces.
#pragma once
#include <ATen/core/Tensor.h>

#include "cpu_capability.h"

namespace skysense {

constexpr int64_t kMaxTemporalTokens = 256;

// Checked arguments: q, k, v (S, heads, T, hd) with contiguous channels (any other strides);
// key_mask (S, T) float 0 / -inf in the accumulation dtype, or undefined.
struct TemporalAttentionInputs {
  at::Tensor q, k, v, key_mask;
  double scale;
  int64_t S, heads, T, hd;
};

TemporalAttentionInputs temporal_attention_prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const std::optional<at::Tensor>& key_padding_mask,
                                                   std::optional<double> scale);

// A new (S, heads, T, hd) tensor stored as (S, T, heads, hd): what an output projection
// reads as (S, T, heads * hd) without a copy.
at::Tensor temporal_attention_output_like(const at::Tensor& q);

}  // namespace skysense

// out (S, heads, T, hd), any strides with contiguous channels (temporal_attention_output_like
// stores it as (S, T, heads, hd)); lse (S, heads, T) in the accumulation dtype. The backward
// writes dq, dk, dv through their strides too (e.g. into one packed (S, T, 3, heads, hd)).
SKYSENSE_DECLARE_CPU_KERNEL(void, temporal_attention_fwd_kernel,
                            (const skysense::TemporalAttentionInputs& in, at::Tensor& out, at::Tensor& lse))
SKYSENSE_DECLARE_CPU_KERNEL(void, temporal_attention_bwd_kernel,
                            (const skysense::TemporalAttentionInputs& in, const at::Tensor& out,
                             const at::Tensor& lse, const at::Tensor& grad_out, at::Tensor& dq, at::Tensor& dk,
                             at::Tensor& dv))
