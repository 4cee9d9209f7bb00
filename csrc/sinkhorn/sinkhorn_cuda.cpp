// Host glue: torch tensors in, kernels/sinkhorn.cu launch out. Compiled by the C++ compiler.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "sinkhorn.cuh"
#include "sinkhorn/sinkhorn.h"

namespace skysense {

std::tuple<at::Tensor, at::Tensor> sinkhorn_cuda(const at::Tensor& scores, double epsilon,
                                                 int64_t num_iters, double tol,
                                                 const std::optional<at::Tensor>& row_marginals,
                                                 const std::optional<at::Tensor>& col_marginals,
                                                 const std::optional<at::Tensor>& out_opt) {
  TORCH_CHECK_VALUE(scores.is_cuda(), "sinkhorn (cuda): scores must be a CUDA tensor, got ", scores.device());
  TORCH_CHECK_VALUE(scores.scalar_type() != at::kDouble,
                    "sinkhorn (cuda): float64 scores are supported on the CPU only; use float32 or bfloat16");
  c10::cuda::CUDAGuard guard(scores.device());
  SinkhornInputs in = sinkhorn_prepare(scores, epsilon, num_iters, tol, row_marginals, col_marginals);
  const int64_t B = in.scores.size(0), N = in.scores.size(1), K = in.scores.size(2);
  at::Tensor out;
  if (out_opt.has_value()) {
    sinkhorn_check_out(*out_opt, scores);
    out = in.batched ? *out_opt : out_opt->unsqueeze(0);
  } else {
    out = at::empty_like(in.scores);
  }
  at::Tensor iters = at::full({B}, num_iters, in.scores.options().dtype(at::kLong));
  at::Tensor status = at::zeros({2 * B}, in.scores.options().dtype(at::kInt));  // status, done
  at::Tensor work = at::empty({static_cast<int64_t>(cuda::sinkhorn_workspace_floats(B, N, K))},
                              in.scores.options().dtype(at::kFloat));
  cuda::SinkhornArgs args{};
  args.scores = in.scores.const_data_ptr();
  args.out = out.mutable_data_ptr();
  args.log_a = in.log_a.const_data_ptr<float>();
  args.log_b = in.log_b.const_data_ptr<float>();
  args.workspace = work.mutable_data_ptr<float>();
  args.status = status.mutable_data_ptr<int32_t>();
  args.iters = iters.mutable_data_ptr<int64_t>();
  args.B = B;
  args.N = N;
  args.K = K;
  args.inv_eps = static_cast<float>(1.0 / epsilon);
  args.num_iters = static_cast<int>(num_iters);
  args.tol = static_cast<float>(tol);
  args.dtype = scores.scalar_type() == at::kFloat      ? cuda::SinkhornDType::kF32
               : scores.scalar_type() == at::kBFloat16 ? cuda::SinkhornDType::kBF16
                                                       : cuda::SinkhornDType::kF16;
  args.stream = c10::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = cuda::sinkhorn_launch(args);
  TORCH_CHECK(err == cudaSuccess, "sinkhorn (cuda): kernel launch failed: ", cudaGetErrorString(err));
  sinkhorn_raise_status(status.narrow(0, 0, B));  // one small device-to-host copy
  if (out_opt.has_value()) return {*out_opt, iters};
  if (!in.batched) out = out.squeeze(0);
  return {out, iters};
}

}  // namespace skysense
