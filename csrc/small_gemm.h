// Small dense matrix products for the CPU attention kernels (window 8: 64 x 64 x 44),
// compiled per CPU_CAPABILITY. Include inside the kernel's CPU_CAPABILITY namespace only.
//
// C[M x Nc] (= or +=) A[M x Kc] . B[Kc x Nc] (or A^T B with A stored Kc x M), row-major
// with leading dimensions. Nc must be a
// multiple of the vector width (callers pad their buffers); each loaded row of B feeds MR
// rows of A, with MR x NV vector accumulators held in registers.
#pragma once
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

// TA: A is stored transposed (Kc x M, leading dimension lda), so C = A^T B without a copy.
template <typename T, int MR, int NV, bool TA = false>
inline void gemm_block(int64_t Kc, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, bool acc) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) c[r][j] = acc ? Vec::loadu(C + r * ldc + j * V) : Vec(T(0));
  for (int64_t p = 0; p < Kc; ++p) {
    Vec b[NV];
    for (int j = 0; j < NV; ++j) b[j] = Vec::loadu(B + p * ldb + j * V);
    for (int r = 0; r < MR; ++r) {
      const Vec a(TA ? A[p * lda + r] : A[r * lda + p]);
      for (int j = 0; j < NV; ++j) c[r][j] = at::vec::fmadd(a, b[j], c[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) c[r][j].store(C + r * ldc + j * V);
}

// Vector registers of the capability: the MR x NV accumulators plus a broadcast A value must
// fit, or the block spills its accumulators to the stack on every step (AVX2 has 16).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVecRegs = 32;
#else
constexpr int kVecRegs = 16;
#endif

template <int NV>
constexpr int rows_per_block() {
  const int mr = (kVecRegs - 2) / NV;
  return mr < 1 ? 1 : mr > 8 ? 8 : mr;
}

template <typename T, int NV, bool TA, int R = rows_per_block<NV>() - 1>
inline void gemm_rows_left(int64_t rows, int64_t Kc, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                           int64_t ldc, bool acc) {
  if constexpr (R >= 1) {
    if (rows == R) return gemm_block<T, R, NV, TA>(Kc, A, lda, B, ldb, C, ldc, acc);
    gemm_rows_left<T, NV, TA, R - 1>(rows, Kc, A, lda, B, ldb, C, ldc, acc);
  }
}

template <typename T, int NV, bool TA>
inline void gemm_panel(int64_t M, int64_t Kc, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                       bool acc) {
  constexpr int MR = rows_per_block<NV>();
  const int64_t row_step = TA ? 1 : lda;  // where row i of op(A) starts
  int64_t i = 0;
  for (; i + MR <= M; i += MR) gemm_block<T, MR, NV, TA>(Kc, A + i * row_step, lda, B, ldb, C + i * ldc, ldc, acc);
  if (i < M) gemm_rows_left<T, NV, TA>(M - i, Kc, A + i * row_step, lda, B, ldb, C + i * ldc, ldc, acc);
}

template <typename T, bool TA = false>
inline void gemm(int64_t M, int64_t Nc, int64_t Kc, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc, bool acc) {
  constexpr int64_t V = at::vec::Vectorized<T>::size();
  int64_t j = 0;
  for (; j + 4 * V <= Nc; j += 4 * V) gemm_panel<T, 4, TA>(M, Kc, A, lda, B + j, ldb, C + j, ldc, acc);
  switch ((Nc - j) / V) {
    case 3: gemm_panel<T, 3, TA>(M, Kc, A, lda, B + j, ldb, C + j, ldc, acc); break;
    case 2: gemm_panel<T, 2, TA>(M, Kc, A, lda, B + j, ldb, C + j, ldc, acc); break;
    case 1: gemm_panel<T, 1, TA>(M, Kc, A, lda, B + j, ldb, C + j, ldc, acc); break;
    default: break;
  }
}

// C = A B (A: M x Kc) and C = A^T B (A stored Kc x M)
template <typename T>
inline void gemm_nn(int64_t M, int64_t Nc, int64_t Kc, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                    int64_t ldc, bool acc) {
  gemm<T, false>(M, Nc, Kc, A, lda, B, ldb, C, ldc, acc);
}
template <typename T>
inline void gemm_tn(int64_t M, int64_t Nc, int64_t Kc, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                    int64_t ldc, bool acc) {
  gemm<T, true>(M, Nc, Kc, A, lda, B, ldb, C, ldc, acc);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
