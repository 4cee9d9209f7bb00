// Sinkhorn-Knopp on CUDA: plain CUDA, no torch headers. The host glue in
// csrc/sinkhorn/sinkhorn_cuda.cpp allocates the buffers and calls sinkhorn_launch.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace skysense::cuda {

enum class SinkhornDType { kF32, kBF16, kF16 };

struct SinkhornArgs {
  const void* scores;   // (B, N, K) contiguous, dtype below
  void* out;            // (B, N, K) same dtype
  const float* log_a;   // (B, N)
  const float* log_b;   // (B, K)
  float* workspace;     // sinkhorn_workspace_floats(B, N, K) floats
  int32_t* status;      // (B,) zero-initialised; see csrc/sinkhorn/sinkhorn.h
  int64_t* iters;       // (B,)
  int64_t B, N, K;
  float inv_eps;
  int num_iters;
  float tol;            // 0: exactly num_iters
  SinkhornDType dtype;
  cudaStream_t stream;
};

// Rows handled by one block of the row and column passes (partial column sums per block).
constexpr int kSinkhornRowsPerBlock = 128;

size_t sinkhorn_workspace_floats(int64_t B, int64_t N, int64_t K);
cudaError_t sinkhorn_launch(const SinkhornArgs& args);

}  // namespace skysense::cuda
