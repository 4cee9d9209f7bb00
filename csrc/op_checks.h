// Argument checks shared by the ops' prepare functions (errors are ValueErrors in Python).
#pragma once
#include <ATen/core/Tensor.h>

#include <sstream>
#include <string>

namespace skysense {

inline std::string shape_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

// q, k, v: same shape of `dim` dimensions (`layout` names them), same floating dtype (float32,
// float64, bfloat16, float16), same device.
inline void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t dim,
                      const char* layout) {
  TORCH_CHECK_VALUE(q.defined() && k.defined() && v.defined(), op, ": q, k and v must be tensors");
  TORCH_CHECK_VALUE(q.dim() == dim, op, ": q must have shape ", layout, ", got ", shape_str(q.sizes()));
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, ": q, k and v must have the same shape, got ",
                    shape_str(q.sizes()), ", ", shape_str(k.sizes()), " and ", shape_str(v.sizes()));
  const auto dt = q.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op,
                    ": q must be float32, float64, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(k.scalar_type() == dt && v.scalar_type() == dt, op, ": q, k and v must have the same dtype, got ",
                    dt, ", ", k.scalar_type(), " and ", v.scalar_type());
  TORCH_CHECK_VALUE(k.device() == q.device() && v.device() == q.device(), op,
                    ": q, k and v must be on the same device, got ", q.device(), ", ", k.device(), " and ", v.device());
}

}  // namespace skysense
