// Fusion token assembly on the CPU (compiled once per CPU_CAPABILITY): every frame's
// (C, h, w) plane is transposed into its slot of the (pixels, L, C) sequence in cache-sized
// blocks, with the date embedding added on the way: one read of the features, one write of
// the tokens. The backward is the same transpose the other way, and sums each frame's
// gradient over pixels for its day's table row.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <vector>

#include "float_dispatch.h"
#include "fusion_tokens/fusion_tokens.h"

namespace skysense::CPU_CAPABILITY {
namespace {

constexpr int64_t kBlock = 64;  // channels x pixels per transposed block (16 KB of floats)

struct Frame {
  int m;        // modality
  int64_t b, t;  // sample, acquisition
  int64_t slot;  // position in the sequence
};

std::vector<Frame> frames(const FusionInputs& in) {
  std::vector<Frame> f;
  for (int64_t b = 0; b < in.B; ++b) {
    int64_t slot = 0;
    for (int m = 0; m < 3; ++m)
      for (int64_t t = 0; t < in.mods[m].T; ++t) f.push_back({m, b, t, slot++});
  }
  return f;
}

bool is_valid(const FusionModality& mod, int64_t b, int64_t t) {
  return !mod.valid.defined() || mod.valid.const_data_ptr<bool>()[b * mod.T + t];
}

// table row of a frame, or -1 for none
int64_t day_row(const FusionInputs& in, const FusionModality& mod, int64_t b, int64_t t) {
  if (!mod.doy.defined() || !in.table.defined()) return -1;
  const int64_t d = mod.doy.const_data_ptr<int64_t>()[b * mod.T + t];
  return std::min(d, kDateTableDays) - 1;  // day 366 shares day 365's row
}

template <typename scalar_t>
void forward(const FusionInputs& in, at::Tensor& tokens) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto fr = frames(in);
  const int64_t HW = in.h * in.w, C = in.C, L = in.L;
  const int64_t pblocks = (HW + kBlock - 1) / kBlock;
  scalar_t* out = tokens.mutable_data_ptr<scalar_t>();
  const scalar_t* table = in.table.defined() ? in.table.const_data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, int64_t(fr.size()) * pblocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const Frame& f = fr[i / pblocks];
      const int64_t p0 = (i % pblocks) * kBlock, p1 = std::min(p0 + kBlock, HW);
      const FusionModality& mod = in.mods[f.m];
      scalar_t* dst = out + (f.b * HW * L + f.slot) * C;  // pixel p: dst + p * L * C
      if (!is_valid(mod, f.b, f.t)) {
        for (int64_t p = p0; p < p1; ++p) std::fill(dst + p * L * C, dst + p * L * C + C, scalar_t(0));
        continue;
      }
      const scalar_t* src = mod.x.const_data_ptr<scalar_t>() + (f.b * mod.T + f.t) * C * HW;
      const int64_t row = day_row(in, mod, f.b, f.t);
      const scalar_t* emb = row >= 0 ? table + row * C : nullptr;
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t c1 = std::min(c0 + kBlock, C);
        if constexpr (std::is_same_v<scalar_t, float>) {
          // (channels x pixels) block -> (pixels x channels) rows: AVX-512 16x16 transposes
          at::vec::transpose_mxn<float>(src + c0 * HW + p0, HW, dst + p0 * L * C + c0, L * C, int(c1 - c0),
                                        int(p1 - p0));
          if (emb)
            for (int64_t p = p0; p < p1; ++p)
              at::vec::map2<float>([](auto a, auto b) { return a + b; }, dst + p * L * C + c0, dst + p * L * C + c0,
                                   emb + c0, c1 - c0);
        } else {
          for (int64_t p = p0; p < p1; ++p) {
            scalar_t* d = dst + p * L * C;
            for (int64_t c = c0; c < c1; ++c)
              d[c] = static_cast<scalar_t>(static_cast<acc_t>(src[c * HW + p]) + (emb ? static_cast<acc_t>(emb[c]) : acc_t(0)));
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void backward(const FusionInputs& in, const at::Tensor& grad, std::array<at::Tensor, 3>& grad_x, at::Tensor& grad_table) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto fr = frames(in);
  const int64_t HW = in.h * in.w, C = in.C, L = in.L;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  // per frame: its gradient transposed back, and its sum over pixels (for the table)
  std::vector<acc_t> sums(grad_table.defined() ? fr.size() * C : 0, acc_t(0));
  at::parallel_for(0, int64_t(fr.size()), 1, [&](int64_t f0, int64_t f1) {
    for (int64_t fi = f0; fi < f1; ++fi) {
      const Frame& f = fr[fi];
      const FusionModality& mod = in.mods[f.m];
      scalar_t* dst = grad_x[f.m].mutable_data_ptr<scalar_t>() + (f.b * mod.T + f.t) * C * HW;
      if (!is_valid(mod, f.b, f.t)) {
        std::fill(dst, dst + C * HW, scalar_t(0));
        continue;
      }
      const scalar_t* src = g + (f.b * HW * L + f.slot) * C;
      acc_t* sum = sums.empty() || day_row(in, mod, f.b, f.t) < 0 ? nullptr : sums.data() + fi * C;
      for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
        const int64_t c1 = std::min(c0 + kBlock, C);
        for (int64_t p0 = 0; p0 < HW; p0 += kBlock) {
          const int64_t p1 = std::min(p0 + kBlock, HW);
          if constexpr (std::is_same_v<scalar_t, float>) {
            at::vec::transpose_mxn<float>(src + p0 * L * C + c0, L * C, dst + c0 * HW + p0, HW, int(p1 - p0),
                                          int(c1 - c0));
          } else {
            for (int64_t c = c0; c < c1; ++c)
              for (int64_t p = p0; p < p1; ++p) dst[c * HW + p] = src[p * L * C + c];
          }
        }
        if (sum)  // the frame's gradient summed over pixels, for its day's table row
          for (int64_t c = c0; c < c1; ++c) {
            acc_t s = 0;
            for (int64_t p = 0; p < HW; ++p) s += static_cast<acc_t>(dst[c * HW + p]);
            sum[c] += s;
          }
      }
    }
  });
  if (grad_table.defined()) {
    acc_t* gt = grad_table.mutable_data_ptr<acc_t>();
    for (size_t fi = 0; fi < fr.size(); ++fi) {
      const Frame& f = fr[fi];
      const FusionModality& mod = in.mods[f.m];
      const int64_t row = day_row(in, mod, f.b, f.t);
      if (row < 0 || !is_valid(mod, f.b, f.t)) continue;
      for (int64_t c = 0; c < C; ++c) gt[row * C + c] += sums[fi * C + c];
    }
  }
}

}  // namespace

void fusion_tokens_fwd_kernel(const FusionInputs& in, at::Tensor& tokens) {
  dispatch_float(in.dtype, "fusion_tokens", [&](auto tag) { forward<decltype(tag)>(in, tokens); });
}

void fusion_tokens_bwd_kernel(const FusionInputs& in, const at::Tensor& grad, std::array<at::Tensor, 3>& grad_x,
                              at::Tensor& grad_table) {
  dispatch_float(in.dtype, "fusion_tokens", [&](auto tag) { backward<decltype(tag)>(in, grad, grad_x, grad_table); });
}

}  // namespace skysense::CPU_CAPABILITY
