// skysense::sinkhorn: schema, argument checks shared by all backends, and the CPU kernel's
// registration. The CUDA key is registered from Python (it picks Triton or CUDA C++).
#include <ATen/ATen.h>

#include <limits>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

#include "op_checks.h"

#include "huge_pages.h"
#include "sinkhorn/sinkhorn.h"

namespace skysense {
namespace {

// Checks one marginal; returns it as (B, L) in the accumulation dtype on the scores' device.
at::Tensor check_marginal(const at::Tensor& m, const char* name, const char* what, int64_t B,
                          int64_t L, const at::Tensor& scores, at::ScalarType acc) {
  TORCH_CHECK_VALUE(m.device() == scores.device(), "sinkhorn: ", name, " must be on ",
                    scores.device(), " like scores, got ", m.device());
  TORCH_CHECK_VALUE(at::isFloatingType(m.scalar_type()), "sinkhorn: ", name,
                    " must be a floating tensor, got ", m.scalar_type());
  const bool ok = (m.dim() == 1 && m.size(0) == L) || (m.dim() == 2 && m.size(0) == B && m.size(1) == L);
  TORCH_CHECK_VALUE(ok, "sinkhorn: ", name, " must have shape (", L, ",) or (", B, ", ", L,
                    ") (one entry per ", what, "), got ", shape_str(m.sizes()));
  at::Tensor m2 = m.to(acc).expand({B, L}).contiguous();
  // subnormal masses have too few bits for the log domain's exp / log round trip (NaN Q)
  const double tiny = acc == at::kDouble ? std::numeric_limits<double>::min() : std::numeric_limits<float>::min();
  TORCH_CHECK_VALUE(at::isfinite(m2).all().item<bool>() && (m2 >= tiny).all().item<bool>(),
                    "sinkhorn: ", name, " must be finite and at least ", tiny, " (the smallest normal ",
                    acc == at::kDouble ? "float64" : "float32", ") everywhere; scale both marginals up");
  return m2;
}

}  // namespace

SinkhornInputs sinkhorn_prepare(const at::Tensor& scores, double epsilon, int64_t num_iters,
                                double tol, const std::optional<at::Tensor>& row_marginals,
                                const std::optional<at::Tensor>& col_marginals) {
  TORCH_CHECK_VALUE(scores.defined(), "sinkhorn: scores is undefined");
  TORCH_CHECK_VALUE(scores.dim() == 2 || scores.dim() == 3,
                    "sinkhorn: scores must have shape (N, K) or (B, N, K), got shape ",
                    shape_str(scores.sizes()));
  const auto dt = scores.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
                    "sinkhorn: scores must be float32, float64, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(std::isfinite(epsilon) && epsilon > 0,
                    "sinkhorn: epsilon must be a finite number > 0, got ", epsilon);
  TORCH_CHECK_VALUE(num_iters >= 1, "sinkhorn: num_iters must be >= 1, got ", num_iters);
  TORCH_CHECK_VALUE(std::isfinite(tol) && tol >= 0,
                    "sinkhorn: tol must be a finite number >= 0 (0 = run exactly num_iters), got ", tol);
  const bool batched = scores.dim() == 3;
  at::Tensor s3 = (batched ? scores : scores.unsqueeze(0)).contiguous();
  const int64_t B = s3.size(0), N = s3.size(1), K = s3.size(2);
  TORCH_CHECK_VALUE(B >= 1 && N >= 1 && K >= 1,
                    "sinkhorn: scores must have at least one problem, sample and prototype, got shape ",
                    shape_str(scores.sizes()));
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = s3.options().dtype(acc);

  // Defaults: every sample has mass 1 and the prototypes share the total equally. When only
  // one side is given, the other is uniform with the same total.
  at::Tensor a, b;
  if (row_marginals.has_value())
    a = check_marginal(*row_marginals, "row_marginals", "sample", B, N, s3, acc);
  if (col_marginals.has_value())
    b = check_marginal(*col_marginals, "col_marginals", "prototype", B, K, s3, acc);
  if (a.defined() && b.defined()) {
    at::Tensor ta = a.sum(1, false, at::kDouble), tb = b.sum(1, false, at::kDouble);
    TORCH_CHECK_VALUE(at::allclose(ta, tb, /*rtol=*/1e-4, /*atol=*/0),
                      "sinkhorn: row_marginals and col_marginals must have the same total mass "
                      "per problem, got ", ta.cpu(), " and ", tb.cpu());
  }
  at::Tensor log_a, log_b;
  if (a.defined()) log_a = a.log();
  else if (b.defined()) log_a = (b.sum(1, true) / static_cast<double>(N)).log().expand({B, N}).contiguous();
  else log_a = at::zeros({B, N}, opts);
  if (b.defined()) log_b = b.log();
  else if (a.defined()) log_b = (a.sum(1, true) / static_cast<double>(K)).log().expand({B, K}).contiguous();
  else log_b = at::full({B, K}, std::log(static_cast<double>(N) / static_cast<double>(K)), opts);
  return {s3, log_a, log_b, epsilon, num_iters, tol, batched};
}

void sinkhorn_check_out(const at::Tensor& out, const at::Tensor& scores) {
  TORCH_CHECK_VALUE(out.defined(), "sinkhorn: out is undefined");
  TORCH_CHECK_VALUE(out.sizes() == scores.sizes(), "sinkhorn: out must have the shape of scores ",
                    shape_str(scores.sizes()), ", got ", shape_str(out.sizes()));
  TORCH_CHECK_VALUE(out.scalar_type() == scores.scalar_type(), "sinkhorn: out must have the dtype of scores (",
                    scores.scalar_type(), "), got ", out.scalar_type());
  TORCH_CHECK_VALUE(out.device() == scores.device(), "sinkhorn: out must be on ", scores.device(),
                    " like scores, got ", out.device());
  TORCH_CHECK_VALUE(out.is_contiguous(), "sinkhorn: out must be contiguous");
  // TooHard (an expanded or otherwise self-overlapping scores) only counts when the two
  // really share a storage: an expanded scores with its own out is fine
  const auto overlap = at::get_overlap_status(out, scores);
  const bool shared = overlap == at::MemOverlapStatus::Full || overlap == at::MemOverlapStatus::Partial ||
                      (overlap == at::MemOverlapStatus::TooHard && out.storage().is_alias_of(scores.storage()));
  TORCH_CHECK_VALUE(!shared, "sinkhorn: out must not share memory with scores");
}

void sinkhorn_raise_status(const at::Tensor& status) {
  at::Tensor st = status.cpu();
  const int32_t* p = st.const_data_ptr<int32_t>();
  for (int64_t b = 0; b < st.numel(); ++b) {
    std::string where = st.numel() > 1 ? " (problem " + std::to_string(b) + ")" : "";
    switch (p[b]) {
      case kSinkhornOk: continue;
      case kSinkhornNonFinite:
        TORCH_CHECK_VALUE(false, "sinkhorn: scores contain NaN or +inf", where,
                          "; scores must be finite (-inf is allowed and gives zero mass)");
      case kSinkhornEmptyColumn:
        TORCH_CHECK_VALUE(false, "sinkhorn: scores has a prototype (column) whose scores are all -inf",
                          where, "; it cannot receive its col_marginals mass");
      case kSinkhornEmptyRow:
        TORCH_CHECK_VALUE(false, "sinkhorn: scores has a sample (row) whose scores are all -inf",
                          where, "; it cannot be assigned");
      case kSinkhornPrecision:
        TORCH_CHECK_VALUE(false, "sinkhorn: |scores| / epsilon is too large for float32", where,
                          " (its log-sum-exp loses the maximum itself); pass float64 scores, a larger epsilon, "
                          "or scores on a smaller scale (e.g. cosine similarities)");
      default: TORCH_CHECK(false, "sinkhorn: internal error, status ", p[b]);
    }
  }
}

namespace {

// Runs the CPU kernel into `out` (scores' shape); returns the iteration counts.
at::Tensor sinkhorn_cpu_into(const at::Tensor& scores, double epsilon, int64_t num_iters, double tol,
                             const std::optional<at::Tensor>& row_marginals,
                             const std::optional<at::Tensor>& col_marginals, at::Tensor& out) {
  SinkhornInputs in = sinkhorn_prepare(scores, epsilon, num_iters, tol, row_marginals, col_marginals);
  sinkhorn_check_out(out, scores);
  const int64_t B = in.scores.size(0);
  at::Tensor out3 = in.batched ? out : out.unsqueeze(0);
  at::Tensor iters = at::empty({B}, in.scores.options().dtype(at::kLong));
  at::Tensor status = at::zeros({B}, in.scores.options().dtype(at::kInt));
  SKYSENSE_CPU_DISPATCH(sinkhorn_cpu_kernel, in.scores, in.log_a, in.log_b, in.epsilon, in.num_iters, in.tol,
                        out3, iters, status);
  sinkhorn_raise_status(status);
  return iters;
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_cpu(const at::Tensor& scores, double epsilon, int64_t num_iters,
                                                double tol, const std::optional<at::Tensor>& row_marginals,
                                                const std::optional<at::Tensor>& col_marginals) {
  TORCH_CHECK_VALUE(scores.defined(), "sinkhorn: scores is undefined");
  at::Tensor out = at::empty(scores.sizes(), scores.options().memory_format(at::MemoryFormat::Contiguous));
  advise_huge_pages(out);  // before the kernel's first write faults it in
  at::Tensor iters = sinkhorn_cpu_into(scores, epsilon, num_iters, tol, row_marginals, col_marginals, out);
  return {out, iters};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skysense, m) {
  m.def(
      "sinkhorn(Tensor scores, float epsilon=0.05, int num_iters=3, float tol=0., "
      "Tensor? row_marginals=None, Tensor? col_marginals=None) -> (Tensor Q, Tensor iters)");
  // Writes Q into a caller's buffer (reused across calls: no fresh pages to fault in);
  // returns the iteration counts.
  m.def(
      "sinkhorn_into(Tensor scores, float epsilon, int num_iters, float tol, "
      "Tensor? row_marginals, Tensor? col_marginals, Tensor(a!) out) -> Tensor iters");
}

TORCH_LIBRARY_IMPL(skysense, CPU, m) {
  m.impl("sinkhorn", &sinkhorn_cpu);
  m.impl("sinkhorn_into", &sinkhorn_cpu_into);
}

}  // namespace skysense
