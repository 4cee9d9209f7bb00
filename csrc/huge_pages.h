// Large fresh outputs on transparent huge pages: where the kernel offers them on request
// (/sys/kernel/mm/transparent_hugepage/enabled = madvise, the common default), the first
// write then faults memory in 2 MiB at a time instead of 4 KiB, which for a 786 MB
// Sinkhorn output is most of the cost of a fresh allocation.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace skysense {

// Advice only (no error if refused); applies to the tensor's whole 2 MiB-aligned interior.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (!t.device().is_cpu() || t.nbytes() < 8 * kHuge) return;
  const auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (p + kHuge - 1) & ~(kHuge - 1), last = (p + t.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

}  // namespace skysense
