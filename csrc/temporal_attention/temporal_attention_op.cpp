// skysense::temporal_attention and its backward: schemas, argument checks shared by every
// backend, and the CPU kernels' registration. The CUDA key is registered from Python.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <cmath>

#include "op_checks.h"
#include "temporal_attention/temporal_attention.h"

namespace skysense {

TemporalAttentionInputs temporal_attention_prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const std::optional<at::Tensor>& key_padding_mask,
                                                   std::optional<double> scale) {
  check_qkv("temporal_attention", q, k, v, 4, "(S, heads, T, head_dim)");
  const auto dt = q.scalar_type();
  TemporalAttentionInputs in;
  in.S = q.size(0), in.heads = q.size(1), in.T = q.size(2), in.hd = q.size(3);
  TORCH_CHECK_VALUE(in.S >= 1 && in.heads >= 1 && in.T >= 1 && in.hd >= 1,
                    "temporal_attention: q has an empty dimension: ", shape_str(q.sizes()));
  auto rows = [](const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); };
  in.q = rows(q), in.k = rows(k), in.v = rows(v);
  in.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(in.hd));
  TORCH_CHECK_VALUE(std::isfinite(in.scale), "temporal_attention: scale must be finite, got ", in.scale);
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    TORCH_CHECK_VALUE(m.device() == q.device(), "temporal_attention: key_padding_mask must be on ", q.device(),
                      " like q, got ", m.device());
    TORCH_CHECK_VALUE(m.scalar_type() == at::kBool, "temporal_attention: key_padding_mask must be bool "
                      "(True = ignore that key), got ", m.scalar_type());
    TORCH_CHECK_VALUE(m.dim() == 2 && m.size(0) == in.S && m.size(1) == in.T,
                      "temporal_attention: key_padding_mask must have shape (S, T) = (", in.S, ", ", in.T, "), got ",
                      shape_str(m.sizes()));
    if (m.device().is_cpu()) {  // reading the data would sync a GPU: there the kernel gives NaN, as SDPA does
      const at::Tensor empty = m.all(1);
      TORCH_CHECK_VALUE(!empty.any().item<bool>(), "temporal_attention: key_padding_mask ignores every key of sequence ",
                        empty.nonzero().flatten()[0].item<int64_t>(),
                        "; a sequence needs at least one valid key (its attention would be undefined)");
    }
    const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
    in.key_mask = at::zeros({in.S, in.T}, q.options().dtype(acc)).masked_fill_(m, -INFINITY);
  }
  return in;
}

at::Tensor temporal_attention_output_like(const at::Tensor& q) {
  return at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options().memory_format(at::MemoryFormat::Contiguous))
      .permute({0, 2, 1, 3});
}

namespace {

// The CPU kernels keep a sequence's scores in registers / L1: the limit is theirs, not the op's.
void check_cpu_tokens(const TemporalAttentionInputs& in) {
  TORCH_CHECK_VALUE(in.T <= kMaxTemporalTokens, "temporal_attention (cpp): sequences of at most ", kMaxTemporalTokens,
                    " tokens, got T = ", in.T);
}

// t in dtype with contiguous channels (the kernels read rows by stride), copying only if needed
at::Tensor as_rows(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor c = t.to(dtype);
  return c.stride(3) == 1 ? c : c.contiguous();
}

std::tuple<at::Tensor, at::Tensor> temporal_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                          const std::optional<at::Tensor>& key_padding_mask,
                                                          std::optional<double> scale) {
  TemporalAttentionInputs in = temporal_attention_prepare(q, k, v, key_padding_mask, scale);
  check_cpu_tokens(in);
  at::Tensor out = temporal_attention_output_like(q);
  at::Tensor lse = at::empty({in.S, in.heads, in.T}, q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  SKYSENSE_CPU_DISPATCH(temporal_attention_fwd_kernel, in, out, lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask, std::optional<double> scale) {
  TemporalAttentionInputs in = temporal_attention_prepare(q, k, v, key_padding_mask, scale);
  check_cpu_tokens(in);
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
                    "temporal_attention_backward: grad_out and out must have the shape of q");
  TORCH_CHECK_VALUE(lse.sizes() == at::IntArrayRef({in.S, in.heads, in.T}),
                    "temporal_attention_backward: lse must have shape (S, heads, T) from the forward");
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dq = temporal_attention_output_like(q), dk = temporal_attention_output_like(q),
             dv = temporal_attention_output_like(q);
  SKYSENSE_CPU_DISPATCH(temporal_attention_bwd_kernel, in, as_rows(out, q.scalar_type()), lse.to(acc).contiguous(), as_rows(grad_out, q.scalar_type()), dq, dk,
                        dv);
  return {dq, dk, dv};
}

// q, k, v (S, heads, T, hd) views of one packed projection (S, T, 3, heads, hd).
std::array<at::Tensor, 3> unpack_qkv(const at::Tensor& qkv) {
  TORCH_CHECK_VALUE(qkv.dim() == 5 && qkv.size(2) == 3,
                    "temporal_attention_qkv: qkv must have shape (S, T, 3, heads, head_dim), got ", shape_str(qkv.sizes()));
  return {qkv.select(2, 0).transpose(1, 2), qkv.select(2, 1).transpose(1, 2), qkv.select(2, 2).transpose(1, 2)};
}

std::tuple<at::Tensor, at::Tensor> temporal_attention_qkv_cpu(const at::Tensor& qkv,
                                                              const std::optional<at::Tensor>& key_padding_mask,
                                                              std::optional<double> scale) {
  auto [q, k, v] = unpack_qkv(qkv);
  return temporal_attention_cpu(q, k, v, key_padding_mask, scale);
}

// The gradient of the packed projection, written in place by the kernel (no stack copy).
at::Tensor temporal_attention_qkv_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                                               const at::Tensor& lse, const std::optional<at::Tensor>& key_padding_mask,
                                               std::optional<double> scale) {
  auto [q, k, v] = unpack_qkv(qkv);
  TemporalAttentionInputs in = temporal_attention_prepare(q, k, v, key_padding_mask, scale);
  check_cpu_tokens(in);
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
                    "temporal_attention_qkv_backward: grad_out and out must have shape (S, heads, T, head_dim)");
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad = at::empty(qkv.sizes(), qkv.options().memory_format(at::MemoryFormat::Contiguous));
  auto [dq, dk, dv] = unpack_qkv(grad);
  SKYSENSE_CPU_DISPATCH(temporal_attention_bwd_kernel, in, as_rows(out, q.scalar_type()), lse.to(acc).contiguous(), as_rows(grad_out, q.scalar_type()), dq, dk,
                        dv);
  return grad;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skysense, m) {
  // The same on one packed projection qkv (S, T, 3, heads, head_dim), as a layer computes
  // it: the backward returns that projection's gradient directly.
  m.def("temporal_attention_qkv(Tensor qkv, Tensor? key_padding_mask=None, float? scale=None) -> (Tensor out, Tensor lse)");
  m.def("temporal_attention_qkv_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, "
        "Tensor? key_padding_mask, float? scale) -> Tensor grad_qkv");
  // q, k, v (S, heads, T, head_dim); key_padding_mask (S, T), True = ignore that key. Returns
  // out (S, heads, T, head_dim), stored as (S, T, heads, head_dim), and lse (S, heads, T).
  m.def("temporal_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask=None, float? scale=None) "
        "-> (Tensor out, Tensor lse)");
  m.def("temporal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor? key_padding_mask, float? scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}

TORCH_LIBRARY_IMPL(skysense, CPU, m) {
  m.impl("temporal_attention", &temporal_attention_cpu);
  m.impl("temporal_attention_backward", &temporal_attention_backward_cpu);
  m.impl("temporal_attention_qkv", &temporal_attention_qkv_cpu);
  m.impl("temporal_attention_qkv_backward", &temporal_attention_qkv_backward_cpu);
}

}  // namespace skysense
