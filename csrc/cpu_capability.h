// Run-time choice among the per-instruction-set copies of the CPU kernels
// (cmake/CpuCapabilities.cmake compiles each *_cpu_kernel.cpp once per capability).
#pragma once
#include <string>

namespace skysense {

enum class CpuCapability { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The best capability this CPU and this build support, lowered by the environment variable
// SKYSENSE_CPU_CAPABILITY or ATen's ATEN_CPU_CAPABILITY (default / avx2 / avx512).
CpuCapability cpu_capability();
std::string cpu_capability_name(CpuCapability c);

}  // namespace skysense

// Declares `ret name args` in each compiled capability namespace.
#define SKYSENSE_DECLARE_CPU_KERNEL(ret, name, args) \
  namespace skysense::DEFAULT { ret name args; }     \
  namespace skysense::AVX2 { ret name args; }        \
  namespace skysense::AVX512 { ret name args; }

#if defined(SKYSENSE_HAVE_AVX512)
#define SKYSENSE_CASE_AVX512(name, ...) \
  case ::skysense::CpuCapability::AVX512: return ::skysense::AVX512::name(__VA_ARGS__);
#else
#define SKYSENSE_CASE_AVX512(name, ...)
#endif
#if defined(SKYSENSE_HAVE_AVX2)
#define SKYSENSE_CASE_AVX2(name, ...) \
  case ::skysense::CpuCapability::AVX2: return ::skysense::AVX2::name(__VA_ARGS__);
#else
#define SKYSENSE_CASE_AVX2(name, ...)
#endif

// Calls the copy of `name` for the capability chosen at run time.
#define SKYSENSE_CPU_DISPATCH(name, ...)                  \
  [&] {                                                   \
    switch (::skysense::cpu_capability()) {               \
      SKYSENSE_CASE_AVX512(name, __VA_ARGS__)             \
      SKYSENSE_CASE_AVX2(name, __VA_ARGS__)               \
      default: return ::skysense::DEFAULT::name(__VA_ARGS__); \
    }                                                     \
  }()
