// Calls f(scalar_t{}) for the floating dtypes the CPU kernels support.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace skysense {

template <typename F>
void dispatch_float(at::ScalarType dt, const char* op, F&& f) {
  switch (dt) {
    case at::kFloat: return f(float());
    case at::kDouble: return f(double());
    case at::kBFloat16: return f(c10::BFloat16());
    case at::kHalf: return f(c10::Half());
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dt);
  }
}

}  // namespace skysense
