// skysense::window_attention and its backward: schemas, argument checks shared by every
// backend, and the CPU kernels' registration. The CUDA key is registered from Python.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "op_checks.h"
#include "window_attention/window_attention.h"

namespace skysense {
namespace {

at::Tensor check_aux(const at::Tensor& t, const char* name, const at::Tensor& q, at::ScalarType acc) {
  TORCH_CHECK_VALUE(t.device() == q.device(), "window_attention: ", name, " must be on ", q.device(),
                    " like q, got ", t.device());
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), "window_attention: ", name,
                    " must be a floating tensor, got ", t.scalar_type());
  return t.to(acc).contiguous();
}

}  // namespace

WindowAttentionInputs window_attention_prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               at::IntArrayRef window, at::IntArrayRef shift,
                                               const std::optional<at::Tensor>& logit_scale,
                                               const std::optional<at::Tensor>& bias,
                                               const std::optional<at::Tensor>& mask, std::optional<double> scale) {
  check_qkv("window_attention", q, k, v, 5, "(B, H, W, heads, head_dim)");
  const auto dt = q.scalar_type();
  TORCH_CHECK_VALUE(window.size() == 2 && shift.size() == 2,
                    "window_attention: window and shift must have two entries (height, width)");
  WindowGeometry g{};
  g.B = q.size(0), g.H = q.size(1), g.W = q.size(2), g.heads = q.size(3), g.hd = q.size(4);
  g.wh = window[0], g.ww = window[1], g.sh = shift[0], g.sw = shift[1];
  TORCH_CHECK_VALUE(g.wh >= 1 && g.ww >= 1, "window_attention: window must be >= 1 per side, got ",
                    shape_str(window));
  TORCH_CHECK_VALUE(g.sh >= 0 && g.sw >= 0 && g.sh < g.wh && g.sw < g.ww,
                    "window_attention: shift must satisfy 0 <= shift < window, got shift ", shape_str(shift),
                    " for window ", shape_str(window));
  TORCH_CHECK_VALUE(g.B >= 1 && g.heads >= 1 && g.hd >= 1, "window_attention: q has an empty dimension: ",
                    shape_str(q.sizes()));
  TORCH_CHECK_VALUE(g.wh <= g.H && g.ww <= g.W, "window_attention: window ", shape_str(window),
                    " is larger than the map (", g.H, ", ", g.W,
                    "); use a window no larger than the map (timm shrinks it to the map)");
  g.Hp = g.H + (g.wh - g.H % g.wh) % g.wh;
  g.Wp = g.W + (g.ww - g.W % g.ww) % g.ww;
  g.nWh = g.Hp / g.wh, g.nWw = g.Wp / g.ww, g.nW = g.nWh * g.nWw, g.N = g.wh * g.ww;
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;

  WindowAttentionInputs in;
  // Any strides (e.g. q, k, v as views into one qkv projection) as long as channels are
  // contiguous; the kernels gather rows by stride.
  auto rows = [](const at::Tensor& t) { return t.stride(4) == 1 ? t : t.contiguous(); };
  in.q = rows(q), in.k = rows(k), in.v = rows(v);
  in.g = g;
  in.scale = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(g.hd));
  TORCH_CHECK_VALUE(std::isfinite(in.scale), "window_attention: scale must be finite, got ", in.scale);
  if (logit_scale.has_value()) {
    in.logit_scale = check_aux(*logit_scale, "logit_scale", q, acc);
    TORCH_CHECK_VALUE(in.logit_scale.numel() == g.heads, "window_attention: logit_scale must have one entry per head (",
                      g.heads, "), got shape ", shape_str(logit_scale->sizes()));
    in.logit_scale = in.logit_scale.reshape({g.heads});
  }
  if (bias.has_value()) {
    in.bias = check_aux(*bias, "bias", q, acc);
    TORCH_CHECK_VALUE(in.bias.dim() == 3 && in.bias.size(0) == g.heads && in.bias.size(1) == g.N && in.bias.size(2) == g.N,
                      "window_attention: bias must have shape (heads, N, N) = (", g.heads, ", ", g.N, ", ", g.N,
                      ") with N = window area, got ", shape_str(bias->sizes()));
  }
  if (mask.has_value()) {
    in.mask = check_aux(*mask, "mask", q, acc);
    TORCH_CHECK_VALUE(in.mask.dim() == 3 && in.mask.size(0) >= 1 && in.mask.size(1) == g.N && in.mask.size(2) == g.N,
                      "window_attention: mask must have shape (M, N, N) with N = window area = ", g.N, ", got ",
                      shape_str(mask->sizes()));
  }
  return in;
}

namespace {

// The CPU kernels keep one window's scores (N x N) in L1: the limit is theirs, not the op's.
void check_cpu_window(at::IntArrayRef window) {
  TORCH_CHECK_VALUE(window[0] <= kMaxWindow && window[1] <= kMaxWindow, "window_attention (cpp): window must be at most ",
                    kMaxWindow, " per side, got ", shape_str(window));
}

std::tuple<at::Tensor, at::Tensor> window_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                        at::IntArrayRef window, at::IntArrayRef shift,
                                                        const std::optional<at::Tensor>& logit_scale,
                                                        const std::optional<at::Tensor>& bias,
                                                        const std::optional<at::Tensor>& mask,
                                                        std::optional<double> scale) {
  WindowAttentionInputs in = window_attention_prepare(q, k, v, window, shift, logit_scale, bias, mask, scale);
  check_cpu_window(window);
  const auto& g = in.g;
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor lse = at::empty({g.B * g.nW, g.heads, g.N}, in.q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  SKYSENSE_CPU_DISPATCH(window_attention_fwd_kernel, in, out, lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, at::IntArrayRef window, at::IntArrayRef shift, const std::optional<at::Tensor>& logit_scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask, std::optional<double> scale) {
  WindowAttentionInputs in = window_attention_prepare(q, k, v, window, shift, logit_scale, bias, mask, scale);
  check_cpu_window(window);
  const auto& g = in.g;
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
                    "window_attention_backward: grad_out and out must have the shape of q");
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == g.B * g.nW && lse.size(1) == g.heads && lse.size(2) == g.N,
                    "window_attention_backward: lse must have shape (B * windows, heads, N) from the forward");
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto zeros = [&] { return at::zeros(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous)); };
  at::Tensor dq = zeros(), dk = zeros(), dv = zeros();
  at::Tensor dlogit = in.logit_scale.defined() ? at::empty({g.heads}, q.options().dtype(acc)) : at::Tensor();
  at::Tensor dbias = in.bias.defined() ? at::empty({g.heads, g.N, g.N}, q.options().dtype(acc)) : at::Tensor();
  SKYSENSE_CPU_DISPATCH(window_attention_bwd_kernel, in, out.to(q.scalar_type()).contiguous(),  // the kernel reads out densely
                        lse.to(acc).contiguous(), grad_out.to(q.scalar_type()).contiguous(), dq, dk, dv, dlogit,
                        dbias);
  if (!dlogit.defined()) dlogit = at::empty({0}, q.options().dtype(acc));
  if (!dbias.defined()) dbias = at::empty({0}, q.options().dtype(acc));
  return {dq, dk, dv, dlogit, dbias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skysense, m) {
  m.def(
      "window_attention(Tensor q, Tensor k, Tensor v, int[2] window, int[2] shift, Tensor? logit_scale=None, "
      "Tensor? bias=None, Tensor? mask=None, float? scale=None) -> (Tensor out, Tensor lse)");
  // Returns dq, dk, dv, d logit_scale (heads,) and d bias (heads, N, N), the last two in the
  // accumulation dtype, or empty (0,) tensors when logit_scale / bias were not given. The
  // names follow ops/fused_op.py's convention: grad_<output> in, grad_<argument> out.
  m.def(
      "window_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "int[2] window, int[2] shift, Tensor? logit_scale, Tensor? bias, Tensor? mask, float? scale) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_logit_scale, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(skysense, CPU, m) {
  m.impl("window_attention", &window_attention_cpu);
  m.impl("window_attention_backward", &window_attention_backward_cpu);
}

}  // namespace skysense
