// Non-temporal (streaming) row writes for the CPU kernels, compiled per CPU_CAPABILITY.
// Include inside the kernel's CPU_CAPABILITY namespace only. For outputs much larger than
// the caches: a streaming store skips the read-for-ownership of the destination line, which
// otherwise adds a full extra read of the output. Callers fence with stream_fence() before
// another thread reads what they wrote.
#pragma once
#include <cstdint>
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

// dst[k] = src[k] * scale for k < K.
inline void stream_scaled_row(float* dst, const float* src, float scale, int64_t K) {
  int64_t k = 0;
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
  constexpr int64_t W = 16;
#else
  constexpr int64_t W = 8;
#endif
  for (; k < K && (reinterpret_cast<uintptr_t>(dst + k) % (W * sizeof(float))) != 0; ++k) dst[k] = src[k] * scale;
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 vs = _mm512_set1_ps(scale);
  for (; k + W <= K; k += W) _mm512_stream_ps(dst + k, _mm512_mul_ps(_mm512_loadu_ps(src + k), vs));
#else
  const __m256 vs = _mm256_set1_ps(scale);
  for (; k + W <= K; k += W) _mm256_stream_ps(dst + k, _mm256_mul_ps(_mm256_loadu_ps(src + k), vs));
#endif
#endif
  for (; k < K; ++k) dst[k] = src[k] * scale;
}

inline void stream_scaled_row(double* dst, const double* src, double scale, int64_t K) {
  for (int64_t k = 0; k < K; ++k) dst[k] = src[k] * scale;
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}
