// Multimodal fusion token assembly: shared declarations of the op's pieces.
#pragma once
#include <ATen/core/Tensor.h>

#include <array>

#include "cpu_capability.h"

namespace skysense {

constexpr int64_t kDateTableDays = 365;

// One modality's frames: features (B, T, C, h, w) (HR as T = 1), day-of-year (B, T) int64 or
// undefined (no date embedding), validity (B, T) bool or undefined (all valid).
struct FusionModality {
  at::Tensor x, doy, valid;
  int64_t T = 0;
};

struct FusionInputs {
  std::array<FusionModality, 3> mods;  // HR, S2, S1 (absent: T = 0)
  at::Tensor table;                    // (365, C) or undefined
  int64_t B, C, h, w, L;               // L = sum of T
  at::ScalarType dtype;
};

FusionInputs fusion_tokens_prepare(const std::optional<at::Tensor>& hr, const std::optional<at::Tensor>& s2,
                                   const std::optional<at::Tensor>& s1, const std::optional<at::Tensor>& doy_hr,
                                   const std::optional<at::Tensor>& doy_s2, const std::optional<at::Tensor>& doy_s1,
                                   const std::optional<at::Tensor>& valid_s2, const std::optional<at::Tensor>& valid_s1,
                                   const std::optional<at::Tensor>& date_table);

}  // namespace skysense

// tokens (B h w, L, C): tokens[(b h + y) w + x, slot, c] = frame[c, y, x] + table[doy - 1, c],
// 0 for invalid frames.
SKYSENSE_DECLARE_CPU_KERNEL(void, fusion_tokens_fwd_kernel, (const skysense::FusionInputs& in, at::Tensor& tokens))
// grads of each present modality's features (B, T, C, h, w) and of the table (365, C).
SKYSENSE_DECLARE_CPU_KERNEL(void, fusion_tokens_bwd_kernel,
                            (const skysense::FusionInputs& in, const at::Tensor& grad,
                             std::array<at::Tensor, 3>& grad_x, at::Tensor& grad_table))
