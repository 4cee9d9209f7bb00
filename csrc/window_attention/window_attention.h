// Shifted-window attention: shared declarations of the op's pieces.
#pragma once
#include <ATen/core/Tensor.h>

#include "cpu_capability.h"

namespace skysense {

constexpr double kWindowMaskValue = -100.0;              // Swin's shifted-region mask
constexpr double kLogitScaleMax = 4.605170185988091;     // log(1 / 0.01): SwinV2's clamp
constexpr int64_t kMaxWindow = 16;

struct WindowGeometry {
  int64_t B, H, W, heads, hd;  // q, k, v: (B, H, W, heads, hd)
  int64_t wh, ww, sh, sw;      // window and shift
  int64_t Hp, Wp, nWh, nWw, nW, N;  // padded map, windows per image, tokens per window
};

// Checked, contiguous arguments. logit_scale (heads,), bias (heads, N, N) and mask (M, N, N)
// are in the accumulation dtype (float32, float64 for float64 q) or undefined.
struct WindowAttentionInputs {
  at::Tensor q, k, v, logit_scale, bias, mask;
  double scale;  // V1 score scale (unused with logit_scale)
  WindowGeometry g;
};

WindowAttentionInputs window_attention_prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                               at::IntArrayRef window, at::IntArrayRef shift,
                                               const std::optional<at::Tensor>& logit_scale,
                                               const std::optional<at::Tensor>& bias,
                                               const std::optional<at::Tensor>& mask, std::optional<double> scale);

}  // namespace skysense

// Forward: out (B, H, W, heads, hd) like q; lse (B * nW, heads, N) accumulation dtype.
SKYSENSE_DECLARE_CPU_KERNEL(void, window_attention_fwd_kernel,
                            (const skysense::WindowAttentionInputs& in, at::Tensor& out, at::Tensor& lse))
// Backward: dq, dk, dv like q; dlogit (heads,) and dbias (heads, N, N) in the accumulation
// dtype when logit_scale / bias were given (else undefined, left alone).
SKYSENSE_DECLARE_CPU_KERNEL(void, window_attention_bwd_kernel,
                            (const skysense::WindowAttentionInputs& in, const at::Tensor& out,
                             const at::Tensor& lse, const at::Tensor& grad_out, at::Tensor& dq, at::Tensor& dk,
                             at::Tensor& dv, at::Tensor& dlogit, at::Tensor& dbias))
