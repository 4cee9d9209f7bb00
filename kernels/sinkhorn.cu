// Log-domain Sinkhorn-Knopp on CUDA. Same algorithm as the CPU kernel (see
// csrc/sinkhorn/sinkhorn_cpu_kernel.cpp): one online column log-sum-exp pass for the first
// column update, then per iteration one row pass that normalises rows (a warp per row,
// log-sum-exp with warp shuffles) and sums the normalised Q per column for the next column
// update. Every sum runs in a fixed order (per-block partials, no atomics on values), so
// results are deterministic: the same bits from run to run.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cmath>

#include "sinkhorn.cuh"

namespace skysense::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kRowWarps = 8;             // warps per row-pass block
constexpr int kColTileK = 32;            // columns per column-pass block
constexpr int kColTileRows = 8;          // row lanes per column-pass block
constexpr int kStatusNonFinite = 1, kStatusEmptyColumn = 2, kStatusEmptyRow = 3, kStatusPrecision = 4;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

// Online log-sum-exp state: sum of exp(x - m).
struct Lse {
  float m, s;
};
__device__ __forceinline__ void lse_add(Lse& a, float x) {
  if (x == -INFINITY) return;  // zero mass
  if (x > a.m) {
    a.s = a.s * __expf(a.m - x) + 1.f;
    a.m = x;
  } else {
    a.s += __expf(x - a.m);  // NaN x propagates into s
  }
}
__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
  const float m = fmaxf(a.m, b.m);
  const float sa = a.s == 0.f ? 0.f : a.s * __expf(a.m - m);
  const float sb = b.s == 0.f ? 0.f : b.s * __expf(b.m - m);
  return {m, sa + sb};
}
__device__ __forceinline__ Lse warp_lse(Lse a) {
  for (int o = kWarp / 2; o > 0; o /= 2) {
    Lse b{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.s, o)};
    a = lse_merge(a, b);
  }
  return a;
}

struct Work {
  float* v;         // (B, K) column potentials
  float* part_m;    // (B, P, K) column-pass partial max
  float* part_s;    // (B, P, K) partial sums (both passes)
  float* err;       // (B, K) |colmass - b| per column
  int32_t* done;    // (B,) converged flags (second half of the status buffer)
};

// First column update, part 1: per block of rows, online column log-sum-exp of S/eps.
template <typename T>
__global__ void col_partial(const T* __restrict__ S, int64_t N, int64_t K, int P, float inv_eps, Work w) {
  const int b = blockIdx.z, p = blockIdx.y;
  const int64_t k = int64_t(blockIdx.x) * kColTileK + threadIdx.x;
  const int64_t r0 = int64_t(p) * kSinkhornRowsPerBlock;
  const int64_t r1 = min(r0 + kSinkhornRowsPerBlock, N);
  Lse st{-INFINITY, 0.f};
  if (k < K) {
    const T* Sb = S + int64_t(b) * N * K;
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kColTileRows) lse_add(st, to_f(Sb[r * K + k]) * inv_eps);
  }
  __shared__ float sm[kColTileRows][kColTileK + 1], ss[kColTileRows][kColTileK + 1];
  sm[threadIdx.y][threadIdx.x] = st.m;
  ss[threadIdx.y][threadIdx.x] = st.s;
  __syncthreads();
  if (threadIdx.y == 0 && k < K) {
    for (int j = 1; j < kColTileRows; ++j) st = lse_merge(st, Lse{sm[j][threadIdx.x], ss[j][threadIdx.x]});
    const int64_t o = (int64_t(b) * P + p) * K + k;
    w.part_m[o] = st.m;
    w.part_s[o] = st.s;
  }
}

// First column update, part 2: v_k = log b_k - LSE_n(S_nk / eps).
__global__ void col_finish(const float* __restrict__ log_b, int64_t K, int P, Work w, int32_t* status) {
  const int b = blockIdx.y;
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  Lse st{-INFINITY, 0.f};
  for (int p = 0; p < P; ++p) {
    const int64_t o = (int64_t(b) * P + p) * K + k;
    st = lse_merge(st, Lse{w.part_m[o], w.part_s[o]});
  }
  if (isnan(st.s) || isnan(st.m) || st.m == INFINITY) {
    atomicMax(status + b, kStatusNonFinite);
  } else if (!(st.s > 0.f)) {  // a finite max with no mass: past float32's precision
    atomicMax(status + b, st.m > -INFINITY ? kStatusPrecision : kStatusEmptyColumn);
  }
  w.v[int64_t(b) * K + k] = log_b[int64_t(b) * K + k] - (st.m + __logf(st.s));
}

// Row update for a block of kSinkhornRowsPerBlock rows. Pass 1: a warp per row, log-sum-exp
// with warp shuffles, the row's shift and scale kept in shared memory. Pass 2, in chunks of
// kColChunk columns: each lane writes Q for its columns down the warp's rows and sums them in
// row order; the warps' sums are then added in warp order. Fixed order throughout, no atomics:
// deterministic, and shared memory stays under the 48 KB every launch gets.
constexpr int kColChunk = 1024;

template <typename T>
__global__ void row_pass(const T* __restrict__ S, T* __restrict__ out, const float* __restrict__ log_a,
                         int64_t N, int64_t K, int P, float inv_eps, bool write, bool accumulate, Work w,
                         int32_t* status) {
  const int b = blockIdx.y, p = blockIdx.x;
  if (w.done[b]) return;
  __shared__ float row_shift[kSinkhornRowsPerBlock], row_scale[kSinkhornRowsPerBlock];
  __shared__ float colsum[kRowWarps][kColChunk];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const float* v = w.v + int64_t(b) * K;
  const int64_t r0 = int64_t(p) * kSinkhornRowsPerBlock;
  const int64_t r1 = min(r0 + kSinkhornRowsPerBlock, N);
  for (int64_t n = r0 + warp; n < r1; n += kRowWarps) {
    const T* x = S + (int64_t(b) * N + n) * K;
    Lse st{-INFINITY, 0.f};
    for (int64_t k = lane; k < K; k += kWarp) lse_add(st, to_f(x[k]) * inv_eps + v[k]);
    st = warp_lse(st);
    const bool ok = st.m > -INFINITY && !isnan(st.s) && !isnan(st.m);
    if (!ok && lane == 0) atomicMax(status + b, isnan(st.s) || isnan(st.m) ? kStatusNonFinite : kStatusEmptyRow);
    if (lane == 0) {
      row_shift[n - r0] = ok ? st.m : 0.f;
      row_scale[n - r0] = ok ? __expf(log_a[int64_t(b) * N + n]) / st.s : 0.f;  // a bad row: Q = 0, status set
    }
  }
  __syncthreads();
  for (int64_t c0 = 0; c0 < K; c0 += kColChunk) {
    const int64_t cw = min(int64_t(kColChunk), K - c0);
    for (int64_t kk = lane; kk < cw; kk += kWarp) {
      const int64_t k = c0 + kk;
      float acc = 0.f;
      for (int64_t n = r0 + warp; n < r1; n += kRowWarps) {
        const int64_t o = (int64_t(b) * N + n) * K + k;
        const float q = __expf(to_f(S[o]) * inv_eps + v[k] - row_shift[n - r0]) * row_scale[n - r0];
        if (write) out[o] = from_f<T>(q);
        acc += q;
      }
      if (accumulate) colsum[warp][kk] = acc;
    }
    if (accumulate) {
      __syncthreads();
      float* dst = w.part_s + (int64_t(b) * P + p) * K + c0;
      for (int64_t kk = threadIdx.x; kk < cw; kk += blockDim.x) {
        float sum = 0.f;
        for (int j = 0; j < kRowWarps; ++j) sum += colsum[j][kk];
        dst[kk] = sum;
      }
      __syncthreads();
    }
  }
}

// Column update from the row pass's sums: v_k += log b_k - log colmass_k.
__global__ void row_finish(const float* __restrict__ log_b, int64_t K, int P, Work w) {
  const int b = blockIdx.y;
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K || w.done[b]) return;
  float cm = 0.f;
  for (int p = 0; p < P; ++p) cm += w.part_s[(int64_t(b) * P + p) * K + k];
  const float lb = log_b[int64_t(b) * K + k];
  w.err[int64_t(b) * K + k] = fabsf(cm - __expf(lb));
  w.v[int64_t(b) * K + k] += lb - __logf(fmaxf(cm, FLT_MIN));
}

// Convergence mode: stop problem b once sum|colmass - b| / sum(b) <= tol.
__global__ void decide(const float* __restrict__ log_b, int64_t K, float tol, int t, Work w, int64_t* iters) {
  const int b = blockIdx.x;
  if (w.done[b]) return;
  float e = 0.f, tot = 0.f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    e += w.err[int64_t(b) * K + k];
    tot += __expf(log_b[int64_t(b) * K + k]);
  }
  __shared__ float se[32], st[32];
  for (int o = kWarp / 2; o > 0; o /= 2) {
    e += __shfl_xor_sync(0xffffffffu, e, o);
    tot += __shfl_xor_sync(0xffffffffu, tot, o);
  }
  if (threadIdx.x % kWarp == 0) {
    se[threadIdx.x / kWarp] = e;
    st[threadIdx.x / kWarp] = tot;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    e = 0.f;
    tot = 0.f;
    for (int i = 0; i < int(blockDim.x) / kWarp; ++i) {
      e += se[i];
      tot += st[i];
    }
    if (e <= tol * tot) {
      w.done[b] = 1;
      iters[b] = t + 1;
    }
  }
}

template <typename T>
cudaError_t launch_typed(const SinkhornArgs& a) {
  const int P = int((a.N + kSinkhornRowsPerBlock - 1) / kSinkhornRowsPerBlock);
  const int64_t BK = a.B * a.K, BPK = a.B * int64_t(P) * a.K;
  Work w{a.workspace, a.workspace + BK, a.workspace + BK + BPK, a.workspace + BK + 2 * BPK, a.status + a.B};
  const T* S = static_cast<const T*>(a.scores);
  T* out = static_cast<T*>(a.out);
  const dim3 fin_grid(unsigned((a.K + 255) / 256), unsigned(a.B));

  col_partial<T><<<dim3(unsigned((a.K + kColTileK - 1) / kColTileK), unsigned(P), unsigned(a.B)),
                   dim3(kColTileK, kColTileRows), 0, a.stream>>>(S, a.N, a.K, P, a.inv_eps, w);
  col_finish<<<fin_grid, 256, 0, a.stream>>>(a.log_b, a.K, P, w, a.status);

  for (int t = 0; t < a.num_iters; ++t) {
    const bool last = t + 1 == a.num_iters;
    const bool write = last || a.tol > 0, accumulate = !last || a.tol > 0;
    row_pass<T><<<dim3(unsigned(P), unsigned(a.B)), kRowWarps * kWarp, 0, a.stream>>>(
        S, out, a.log_a, a.N, a.K, P, a.inv_eps, write, accumulate, w, a.status);
    if (accumulate) row_finish<<<fin_grid, 256, 0, a.stream>>>(a.log_b, a.K, P, w);
    if (a.tol > 0) decide<<<unsigned(a.B), 256, 0, a.stream>>>(a.log_b, a.K, a.tol, t, w, a.iters);
  }
  return cudaGetLastError();
}

}  // namespace

size_t sinkhorn_workspace_floats(int64_t B, int64_t N, int64_t K) {
  const int64_t P = (N + kSinkhornRowsPerBlock - 1) / kSinkhornRowsPerBlock;
  return size_t(2 * B * K + 2 * B * P * K);
}

cudaError_t sinkhorn_launch(const SinkhornArgs& args) {
  switch (args.dtype) {
    case SinkhornDType::kF32: return launch_typed<float>(args);
    case SinkhornDType::kBF16: return launch_typed<__nv_bfloat16>(args);
    case SinkhornDType::kF16: return launch_typed<__half>(args);
  }
  return cudaErrorInvalidValue;
}

}  // namespace skysense::cuda
