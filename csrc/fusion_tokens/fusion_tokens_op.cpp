// skysense::fusion_tokens and its backward: schemas, argument checks shared by every
// backend, and the CPU kernels' registration.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "op_checks.h"

#include "fusion_tokens/fusion_tokens.h"

namespace skysense {
namespace {

const char* kNames[3] = {"hr", "s2", "s1"};
const char* kDoy[3] = {"doy_hr", "doy_s2", "doy_s1"};
const char* kValid[3] = {"valid_hr", "valid_s2", "valid_s1"};

}  // namespace

FusionInputs fusion_tokens_prepare(const std::optional<at::Tensor>& hr, const std::optional<at::Tensor>& s2,
                                   const std::optional<at::Tensor>& s1, const std::optional<at::Tensor>& doy_hr,
                                   const std::optional<at::Tensor>& doy_s2, const std::optional<at::Tensor>& doy_s1,
                                   const std::optional<at::Tensor>& valid_s2, const std::optional<at::Tensor>& valid_s1,
                                   const std::optional<at::Tensor>& date_table) {
  const std::optional<at::Tensor>* xs[3] = {&hr, &s2, &s1};
  const std::optional<at::Tensor>* doys[3] = {&doy_hr, &doy_s2, &doy_s1};
  const std::optional<at::Tensor>* valids[3] = {nullptr, &valid_s2, &valid_s1};
  FusionInputs in{};
  const at::Tensor* first = nullptr;
  for (int m = 0; m < 3; ++m) {
    if (!xs[m]->has_value()) {
      TORCH_CHECK_VALUE(!doys[m]->has_value(), "fusion_tokens: ", kDoy[m], " given but ", kNames[m], " is absent");
      TORCH_CHECK_VALUE(!(valids[m] && valids[m]->has_value()), "fusion_tokens: ", kValid[m], " given but ",
                        kNames[m], " is absent");
      continue;
    }
    const at::Tensor& x = xs[m]->value();
    const int64_t want = m == 0 ? 4 : 5;
    TORCH_CHECK_VALUE(x.dim() == want, "fusion_tokens: ", kNames[m], " must have shape ",
                      m == 0 ? "(B, C, h, w)" : "(B, T, C, h, w)", ", got ", shape_str(x.sizes()));
    at::Tensor x5 = m == 0 ? x.unsqueeze(1) : x;
    if (!first) {
      first = &x;
      in.B = x5.size(0), in.C = x5.size(2), in.h = x5.size(3), in.w = x5.size(4);
      in.dtype = x.scalar_type();
      TORCH_CHECK_VALUE(at::isFloatingType(in.dtype), "fusion_tokens: ", kNames[m], " must be floating, got ", in.dtype);
    } else {
      TORCH_CHECK_VALUE(x5.size(0) == in.B && x5.size(2) == in.C,
                        "fusion_tokens: ", kNames[m], " must have the batch size and channels of the other modalities (B=",
                        in.B, ", C=", in.C, "), got ", shape_str(x.sizes()));
      TORCH_CHECK_VALUE(x5.size(3) == in.h && x5.size(4) == in.w, "fusion_tokens: ", kNames[m],
                        " is on a ", x5.size(3), "x", x5.size(4), " grid but the other modalities are on ", in.h, "x",
                        in.w, "; all modalities must share the fusion grid");
      TORCH_CHECK_VALUE(x.scalar_type() == in.dtype, "fusion_tokens: ", kNames[m], " has dtype ", x.scalar_type(),
                        ", the other modalities ", in.dtype);
      TORCH_CHECK_VALUE(x.device() == first->device(), "fusion_tokens: ", kNames[m], " is on ", x.device(),
                        ", the other modalities on ", first->device());
    }
    FusionModality& mod = in.mods[m];
    mod.x = x5.contiguous();
    mod.T = x5.size(1);
    TORCH_CHECK_VALUE(mod.T >= 1, "fusion_tokens: ", kNames[m], " has no acquisitions (T = 0); leave the ",
                      "modality out (None) instead");
    if (doys[m]->has_value()) {
      const at::Tensor& d = doys[m]->value();
      TORCH_CHECK_VALUE(!at::isFloatingType(d.scalar_type()) && d.scalar_type() != at::kBool,
                        "fusion_tokens: ", kDoy[m], " must be an integer tensor of days of year, got ", d.scalar_type());
      TORCH_CHECK_VALUE(d.device() == x.device(), "fusion_tokens: ", kDoy[m], " must be on ", x.device());
      TORCH_CHECK_VALUE(d.numel() == in.B * mod.T && d.size(0) == in.B, "fusion_tokens: ", kDoy[m], " must have shape ",
                        m == 0 ? "(B,)" : "(B, T)", " = (", in.B, m == 0 ? ")" : ", ", m == 0 ? "" : std::to_string(mod.T),
                        m == 0 ? "" : ")", ", got ", shape_str(d.sizes()));
      mod.doy = d.reshape({in.B, mod.T}).to(at::kLong).contiguous();
    }
    if (valids[m] && valids[m]->has_value()) {
      const at::Tensor& v = valids[m]->value();
      TORCH_CHECK_VALUE(v.scalar_type() == at::kBool, "fusion_tokens: ", kValid[m], " must be bool, got ", v.scalar_type());
      TORCH_CHECK_VALUE(v.device() == x.device(), "fusion_tokens: ", kValid[m], " must be on ", x.device());
      TORCH_CHECK_VALUE(v.dim() == 2 && v.size(0) == in.B && v.size(1) == mod.T, "fusion_tokens: ", kValid[m],
                        " must have shape (B, T) = (", in.B, ", ", mod.T, "), got ", shape_str(v.sizes()));
      mod.valid = v.contiguous();
    }
    if (mod.doy.defined() && x.device().is_cpu()) {  // on a GPU the kernels clamp to 1..365 (no host sync)
      at::Tensor bad = (mod.doy < 1) | (mod.doy > 366);
      if (mod.valid.defined()) bad &= mod.valid;
      TORCH_CHECK_VALUE(!bad.any().item<bool>(), "fusion_tokens: ", kDoy[m],
                        " must hold days of year in 1..366 for every valid acquisition, got ",
                        mod.doy.masked_select(bad).flatten()[0].item<int64_t>());
    }
    in.L += mod.T;
  }
  TORCH_CHECK_VALUE(first != nullptr, "fusion_tokens: at least one of hr, s2, s1 must be given");
  if (date_table.has_value()) {
    at::Tensor t = date_table->dim() == 3 && date_table->size(0) == 1 ? date_table->squeeze(0) : *date_table;
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == kDateTableDays && t.size(1) == in.C,
                      "fusion_tokens: date_table must have shape (365, C) or (1, 365, C) with C = ", in.C, ", got ",
                      shape_str(date_table->sizes()));
    TORCH_CHECK_VALUE(t.device() == first->device(), "fusion_tokens: date_table must be on ", first->device());
    in.table = t.to(in.dtype).contiguous();
  } else {
    for (int m = 0; m < 3; ++m)
      TORCH_CHECK_VALUE(!in.mods[m].doy.defined(), "fusion_tokens: ", kDoy[m], " given but date_table is None");
  }
  return in;
}

namespace {

at::Tensor key_padding_mask(const FusionInputs& in, const at::TensorOptions& opts) {
  std::vector<at::Tensor> parts;
  for (const auto& mod : in.mods) {
    if (mod.T == 0) continue;
    parts.push_back(mod.valid.defined() ? mod.valid.logical_not()
                                        : at::zeros({in.B, mod.T}, opts.dtype(at::kBool)));
  }
  return at::cat(parts, 1).unsqueeze(1).expand({in.B, in.h * in.w, in.L}).reshape({in.B * in.h * in.w, in.L});
}

std::tuple<at::Tensor, at::Tensor> fusion_tokens_cpu(
    const std::optional<at::Tensor>& hr, const std::optional<at::Tensor>& s2, const std::optional<at::Tensor>& s1,
    const std::optional<at::Tensor>& doy_hr, const std::optional<at::Tensor>& doy_s2,
    const std::optional<at::Tensor>& doy_s1, const std::optional<at::Tensor>& valid_s2,
    const std::optional<at::Tensor>& valid_s1, const std::optional<at::Tensor>& date_table) {
  FusionInputs in = fusion_tokens_prepare(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table);
  const auto opts = in.mods[0].T ? in.mods[0].x.options() : in.mods[1].T ? in.mods[1].x.options() : in.mods[2].x.options();
  at::Tensor tokens = at::empty({in.B * in.h * in.w, in.L, in.C}, opts);
  SKYSENSE_CPU_DISPATCH(fusion_tokens_fwd_kernel, in, tokens);
  return {tokens, key_padding_mask(in, opts)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fusion_tokens_backward_cpu(
    const at::Tensor& grad, const std::optional<at::Tensor>& hr, const std::optional<at::Tensor>& s2,
    const std::optional<at::Tensor>& s1, const std::optional<at::Tensor>& doy_hr, const std::optional<at::Tensor>& doy_s2,
    const std::optional<at::Tensor>& doy_s1, const std::optional<at::Tensor>& valid_s2,
    const std::optional<at::Tensor>& valid_s1, const std::optional<at::Tensor>& date_table) {
  FusionInputs in = fusion_tokens_prepare(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == in.B * in.h * in.w && grad.size(1) == in.L && grad.size(2) == in.C,
                    "fusion_tokens_backward: grad must have the tokens' shape");
  at::Tensor g = grad.to(in.dtype).contiguous();
  std::array<at::Tensor, 3> gx;
  for (int m = 0; m < 3; ++m)
    gx[m] = in.mods[m].T ? at::empty_like(in.mods[m].x) : at::empty({0}, g.options());
  const auto acc = in.dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gt = in.table.defined() ? at::zeros({kDateTableDays, in.C}, g.options().dtype(acc)) : at::Tensor();
  SKYSENSE_CPU_DISPATCH(fusion_tokens_bwd_kernel, in, g, gx, gt);
  if (in.mods[0].T) gx[0] = gx[0].squeeze(1);
  if (!gt.defined()) gt = at::empty({0}, g.options());
  return {gx[0], gx[1], gx[2], gt};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(skysense, m) {
  // Returns tokens (B h w, L, C) in the order [HR, S2 x T1, S1 x T2] (absent modalities take
  // no slots) and the key padding mask (B h w, L), True for invalid acquisitions.
  m.def("fusion_tokens(Tensor? hr, Tensor? s2, Tensor? s1, Tensor? doy_hr=None, Tensor? doy_s2=None, "
        "Tensor? doy_s1=None, Tensor? valid_s2=None, Tensor? valid_s1=None, Tensor? date_table=None) "
        "-> (Tensor tokens, Tensor key_padding_mask)");
  // Gradients of hr, s2, s1 and of the date table ((0,) where absent); the table's in
  // float32 (float64 for float64 features).
  m.def("fusion_tokens_backward(Tensor grad_tokens, Tensor? hr, Tensor? s2, Tensor? s1, Tensor? doy_hr, Tensor? doy_s2, "
        "Tensor? doy_s1, Tensor? valid_s2, Tensor? valid_s1, Tensor? date_table) "
        "-> (Tensor grad_hr, Tensor grad_s2, Tensor grad_s1, Tensor grad_date_table)");
}

TORCH_LIBRARY_IMPL(skysense, CPU, m) {
  m.impl("fusion_tokens", &fusion_tokens_cpu);
  m.impl("fusion_tokens_backward", &fusion_tokens_backward_cpu);
}

}  // namespace skysense
