// The pybind11 module skysense_fast._C: loading it registers the torch.ops.skysense ops;
// it also reports what was built and exposes the host entry points that the Python-side
// CUDA dispatch (Triton or CUDA C++) uses.
#include <torch/extension.h>

#include "cpu_capability.h"
#include "sinkhorn/sinkhorn.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict d;
  d["torch_version"] = SKYSENSE_TORCH_VERSION;
#if defined(SKYSENSE_WITH_CUDA)
  d["cuda"] = true;
  d["cuda_archs"] = SKYSENSE_CUDA_ARCHS;
  d["cuda_reason"] = "";
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
  d["cuda_reason"] = SKYSENSE_CUDA_REASON;
#endif
  py::list caps;
  caps.append("default");
#if defined(SKYSENSE_HAVE_AVX2)
  caps.append("avx2");
#endif
#if defined(SKYSENSE_HAVE_AVX512)
  caps.append("avx512");
#endif
  d["cpu_capabilities_built"] = caps;
  d["cpu_capability"] = skysense::cpu_capability_name(skysense::cpu_capability());
#if defined(__clang__)
  d["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = "gcc " __VERSION__;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "skysense_fast native extension";
  m.def("build_info", &build_info, "What this build contains");
  m.def(
      "sinkhorn_prepare",
      [](const at::Tensor& scores, double epsilon, int64_t num_iters, double tol,
         std::optional<at::Tensor> row_marginals, std::optional<at::Tensor> col_marginals) {
        auto in = skysense::sinkhorn_prepare(scores, epsilon, num_iters, tol, row_marginals, col_marginals);
        return py::make_tuple(in.scores, in.log_a, in.log_b, in.batched);
      },
      "Checks sinkhorn's arguments; returns (scores as (B,N,K), log_a, log_b, batched)");
  m.def("sinkhorn_raise_status", &skysense::sinkhorn_raise_status);
  m.def("sinkhorn_check_out", &skysense::sinkhorn_check_out);
#if defined(SKYSENSE_WITH_CUDA)
  m.def("sinkhorn_cuda", &skysense::sinkhorn_cuda, "CUDA C++ Sinkhorn (kernels/sinkhorn.cu)",
        py::arg("scores"), py::arg("epsilon"), py::arg("num_iters"), py::arg("tol"), py::arg("row_marginals"),
        py::arg("col_marginals"), py::arg("out") = py::none());
#endif
}
