// Sinkhorn-Knopp prototype assignment: shared declarations of the op's pieces.
#pragma once
#include <ATen/core/Tensor.h>

#include "cpu_capability.h"

namespace skysense {

// What a kernel found wrong with the scores (it finds these during its own passes, so the
// check costs no extra read). Reported per problem; the op turns them into ValueErrors.
enum SinkhornStatus : int32_t {
  kSinkhornOk = 0,
  kSinkhornNonFinite = 1,   // NaN or +inf in scores
  kSinkhornEmptyColumn = 2, // a prototype whose scores are all -inf: it cannot take mass
  kSinkhornEmptyRow = 3,    // a sample whose scores are all -inf (after the column scaling)
  kSinkhornPrecision = 4,   // |scores| / epsilon beyond what the accumulation type resolves
};

// Validated, prepared arguments: scores as (B, N, K) contiguous, log-marginals (B, N) and
// (B, K) in the accumulation dtype (float32, or float64 for float64 scores).
struct SinkhornInputs {
  at::Tensor scores;
  at::Tensor log_a;
  at::Tensor log_b;
  double epsilon;
  int64_t num_iters;
  double tol;
  bool batched;  // scores came in as (B, N, K); else (N, K)
};

// Argument checks shared by every backend (TORCH_CHECK_VALUE: a ValueError in Python).
SinkhornInputs sinkhorn_prepare(const at::Tensor& scores, double epsilon, int64_t num_iters,
                                double tol, const std::optional<at::Tensor>& row_marginals,
                                const std::optional<at::Tensor>& col_marginals);

// Checks a caller-provided output: scores' shape, dtype and device, contiguous, and not
// overlapping scores (kernels read scores again after writing Q).
void sinkhorn_check_out(const at::Tensor& out, const at::Tensor& scores);

// Raises a ValueError naming the first problem whose status is not ok.
void sinkhorn_raise_status(const at::Tensor& status);

#if defined(SKYSENSE_WITH_CUDA)
std::tuple<at::Tensor, at::Tensor> sinkhorn_cuda(const at::Tensor& scores, double epsilon,
                                                 int64_t num_iters, double tol,
                                                 const std::optional<at::Tensor>& row_marginals,
                                                 const std::optional<at::Tensor>& col_marginals,
                                                 const std::optional<at::Tensor>& out);
#endif

}  // namespace skysense

// The CPU kernel, one copy per instruction set. Writes out (B,N,K), iters (B,) int64 and
// status (B,) int32. Never throws from inside its parallel regions.
SKYSENSE_DECLARE_CPU_KERNEL(void, sinkhorn_cpu_kernel,
                            (const at::Tensor& scores, const at::Tensor& log_a,
                             const at::Tensor& log_b, double epsilon, int64_t num_iters,
                             double tol, at::Tensor& out, at::Tensor& iters, at::Tensor& status))
