// exp for the CPU kernels' inner loops, compiled per CPU_CAPABILITY. Include inside the
// kernel's CPU_CAPABILITY namespace only.
//
// float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor polynomial
// (relative error ~2e-7), then p * 2^n. Inputs below about -103 give exactly 0 (no
// denormals), NaN propagates, -inf gives 0. About 11 vector instructions on AVX-512 (scalef
// does the 2^n and the underflow), 14 on AVX2, against ~16 for ATen's exp_u20.
#pragma once
#include <ATen/cpu/vec/vec.h>
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

inline at::vec::Vectorized<float> fast_exp(const at::vec::Vectorized<float>& xv) {
#if defined(CPU_CAPABILITY_AVX512)
  __m512 x = _mm512_max_ps(_mm512_set1_ps(-104.f), xv);  // NaN in x stays NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 lo = _mm256_set1_ps(-87.3f);  // below ln(FLT_MIN): flush to 0
  __m256 x = _mm256_max_ps(lo, xv);
  const __m256 under = _mm256_cmp_ps(xv, lo, _CMP_LT_OQ);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, res);  // NaN compares false: stays NaN
#else
  return xv.exp_u20();
#endif
}

inline at::vec::Vectorized<double> fast_exp(const at::vec::Vectorized<double>& x) { return x.exp(); }

// 2^y: the kernels fold log2(e) into the multiply-add that forms the exponent, which saves
// the reduction's multiply and second Cody-Waite step (y - round(y) is exact). Degree-6
// polynomial in r ln2, |r| <= 1/2 (relative error ~2e-7); below about -150 gives 0.
inline at::vec::Vectorized<float> fast_exp2(const at::vec::Vectorized<float>& yv) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 y = _mm512_max_ps(_mm512_set1_ps(-150.f), yv);  // NaN in y stays NaN
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(y, n);
  __m512 p = _mm512_set1_ps(1.5403530393381609e-4f);  // ln2^6 / 720
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3333558146428443e-3f));  // ln2^5 / 120
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.6181291076284772e-3f));  // ln2^4 / 24
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5504108664821580e-2f));  // ln2^3 / 6
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022650695910071e-1f));  // ln2^2 / 2
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.9314718055994531e-1f));  // ln2
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
#elif defined(CPU_CAPABILITY_AVX2)
  const __m256 lo = _mm256_set1_ps(-126.f);  // below 2^-126: flush to 0
  const __m256 y = _mm256_max_ps(lo, yv);
  const __m256 under = _mm256_cmp_ps(yv, lo, _CMP_LT_OQ);
  const __m256 n = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_sub_ps(y, n);
  __m256 p = _mm256_set1_ps(1.5403530393381609e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3333558146428443e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.6181291076284772e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.5504108664821580e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.4022650695910071e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(6.9314718055994531e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
#else
  return fast_exp(yv * at::vec::Vectorized<float>(0.693147180559945309f));
#endif
}

inline at::vec::Vectorized<double> fast_exp2(const at::vec::Vectorized<double>& y) {
  return (y * at::vec::Vectorized<double>(0.693147180559945309417)).exp();
}
