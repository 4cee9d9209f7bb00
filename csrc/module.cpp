// The pybind11 module skysense_fast._C: loading it registers the torch.ops.skysense ops;
// it also reports what was built and exposes the host entry points that the Python-side
// CUDA dispatch (Triton or CUDA C++) uses.
#include <torch/extension.h>

#include "cpu_capability.h"
#include "fusion_tokens/fusion_tokens.h"
#include "sinkhorn/sinkhorn.h"
#include "temporal_attention/temporal_attention.h"
#include "window_attention/window_attention.h"

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
  // The CPU kernels' own limits (the ops' backend choice reads them)
  d["cpu_max_window"] = skysense::kMaxWindow;
  d["cpu_max_tokens"] = skysense::kMaxTemporalTokens;
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
      "Checks sinkhorn's arguments; returns (scores as (B,N,K), log_a, log_b, batched)", py::arg("scores"),
      py::arg("epsilon"), py::arg("num_iters"), py::arg("tol"), py::arg("row_marginals"), py::arg("col_marginals"));
  m.def("sinkhorn_raise_status", &skysense::sinkhorn_raise_status);
  m.def("sinkhorn_check_out", &skysense::sinkhorn_check_out);
  m.def(
      "window_attention_prepare",
      [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, std::vector<int64_t> window,
         std::vector<int64_t> shift, std::optional<at::Tensor> logit_scale, std::optional<at::Tensor> bias,
         std::optional<at::Tensor> mask, std::optional<double> scale) {
        auto in = skysense::window_attention_prepare(q, k, v, window, shift, logit_scale, bias, mask, scale);
        auto opt = [](const at::Tensor& t) { return t.defined() ? py::cast(t) : py::none(); };
        const auto& g = in.g;
        py::dict geom;
        for (auto [name, val] : std::initializer_list<std::pair<const char*, int64_t>>{
                 {"B", g.B}, {"H", g.H}, {"W", g.W}, {"heads", g.heads}, {"hd", g.hd}, {"wh", g.wh}, {"ww", g.ww},
                 {"sh", g.sh}, {"sw", g.sw}, {"Hp", g.Hp}, {"Wp", g.Wp}, {"nWh", g.nWh}, {"nWw", g.nWw},
                 {"nW", g.nW}, {"N", g.N}})
          geom[name] = val;
        return py::make_tuple(in.q, in.k, in.v, opt(in.logit_scale), opt(in.bias), opt(in.mask), in.scale, geom);
      },
      "Checks window_attention's arguments; returns (q, k, v, logit_scale, bias, mask, scale, geometry)",
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("window"), py::arg("shift"), py::arg("logit_scale"),
      py::arg("bias"), py::arg("mask"), py::arg("scale"));
  m.def(
      "temporal_attention_prepare",
      [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, std::optional<at::Tensor> key_padding_mask,
         std::optional<double> scale) {
        auto in = skysense::temporal_attention_prepare(q, k, v, key_padding_mask, scale);
        return py::make_tuple(in.q, in.k, in.v, in.key_mask.defined() ? py::cast(in.key_mask) : py::none(), in.scale);
      },
      "Checks temporal_attention's arguments; returns (q, k, v, additive key mask or None, scale)", py::arg("q"),
      py::arg("k"), py::arg("v"), py::arg("key_padding_mask"), py::arg("scale"));
  m.def("temporal_attention_output_like", &skysense::temporal_attention_output_like);
  m.def(
      "fusion_tokens_check",
      [](std::optional<at::Tensor> hr, std::optional<at::Tensor> s2, std::optional<at::Tensor> s1,
         std::optional<at::Tensor> doy_hr, std::optional<at::Tensor> doy_s2, std::optional<at::Tensor> doy_s1,
         std::optional<at::Tensor> valid_s2, std::optional<at::Tensor> valid_s1, std::optional<at::Tensor> table) {
        skysense::fusion_tokens_prepare(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, table);
      },
      "Checks fusion_tokens' arguments (ValueError naming the problem)", py::arg("hr"), py::arg("s2"), py::arg("s1"),
      py::arg("doy_hr"), py::arg("doy_s2"), py::arg("doy_s1"), py::arg("valid_s2"), py::arg("valid_s1"),
      py::arg("date_table"));
#if defined(SKYSENSE_WITH_CUDA)
  m.def("sinkhorn_cuda", &skysense::sinkhorn_cuda, "CUDA C++ Sinkhorn (kernels/sinkhorn.cu)",
        py::arg("scores"), py::arg("epsilon"), py::arg("num_iters"), py::arg("tol"), py::arg("row_marginals"),
        py::arg("col_marginals"), py::arg("out") = py::none());
#endif
}
