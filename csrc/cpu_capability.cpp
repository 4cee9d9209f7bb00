#include "cpu_capability.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace skysense {
namespace {

CpuCapability detect() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
#if defined(SKYSENSE_HAVE_AVX512)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma"))
    return CpuCapability::AVX512;
#endif
#if defined(SKYSENSE_HAVE_AVX2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return CpuCapability::AVX2;
#endif
#endif
  return CpuCapability::DEFAULT;
}

CpuCapability from_env(CpuCapability best) {
  for (const char* var : {"SKYSENSE_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY"}) {
    const char* v = std::getenv(var);
    if (!v || !*v) continue;
    std::string s(v);
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    CpuCapability want = best;
    if (s == "default") want = CpuCapability::DEFAULT;
    else if (s == "avx2") want = CpuCapability::AVX2;
    else if (s == "avx512") want = CpuCapability::AVX512;
    return std::min(want, best);  // never above what the CPU supports
  }
  return best;
}

}  // namespace

CpuCapability cpu_capability() {
  static const CpuCapability cap = from_env(detect());
  return cap;
}

std::string cpu_capability_name(CpuCapability c) {
  switch (c) {
    case CpuCapability::AVX512: return "avx512";
    case CpuCapability::AVX2: return "avx2";
    default: return "default";
  }
}

}  // namespace skysense
