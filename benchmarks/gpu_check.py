"""GPU benchmark for `make gpu-check`: each fused op against the baselines its users would
call, bf16 forward and forward + backward, then the 2b model. Every table is printed (and
appended to $OUT/gpu_check.md when OUT is set) as soon as it is measured, so a time-out
keeps what was done; a section that fails is reported and makes the run exit 1 after the
others have run.

Baselines are called the way their users call them, on the views a layer passes (q, k, v as
views of one projection), never on copies forced on them:

* Sinkhorn-Knopp (fp32, bf16, 3 iterations): CUDA C++ and Triton vs the SwAV loop as written;
* window attention (SwinV2-H stage 1 / 3, head_dim 44, window 8, shift 0 / 4): Triton vs
  timm's eager arithmetic, FlexAttention (compiled; bias and shift mask as score_mod) and SDPA
  with the bias + mask as attn_mask;
* temporal attention (31 tokens, 16 heads x 64, key padding; 65,535 and 262,144 sequences):
  Triton vs SDPA (in launches of at most 65,535 sequences, the most its kernels take), and
  SDPA's flash kernel without the padding (it cannot mask keys) as the shape's speed of light;
* fusion tokens (2b width, 2816 channels): Triton vs the eager reference;
* the 2b model: bf16 vs fp32 feature drift, a forward + backward step, the pretraining step.

Rates are against the card's measured device copy bandwidth and its dense bf16 matmul rate.
"""

from __future__ import annotations

import os
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(__file__))
import skysense_fast  # noqa: E402
from sinkhorn_baselines import swav_loop  # noqa: E402
from window_attention_baselines import eager as window_eager  # noqa: E402
from window_attention_baselines import sdpa as window_sdpa  # noqa: E402

FAILURES: list[str] = []


def emit(rows: list[str]) -> None:
    text = "\n".join(rows)
    print(text, flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_check.md"), "a") as f:
            f.write(text + "\n")


def section(fn, *args):
    """Runs one table; a failure is printed with its traceback and remembered, not fatal."""
    try:
        emit(fn(*args))
    except Exception as e:  # noqa: BLE001 - report and go on to the next table
        traceback.print_exc()
        FAILURES.append(f"{fn.__name__}: {type(e).__name__}: {str(e)[:300]}")
        emit(["", f"**{fn.__name__} failed**: {type(e).__name__}: {str(e)[:300]}"])


def time_ms(fn, reps=20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    x = torch.empty(1 << 28, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / time_ms(lambda: y.copy_(x), reps=10) / 1e6  # GB/s


def matmul_peak() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    return 2 * 8192**3 / time_ms(lambda: a @ a, reps=10) / 1e9  # TFLOP/s


def checked(name, value, ref, tol):
    err = (value.float() - ref.float()).abs().max().item()
    if not err <= tol:  # NaN fails too
        FAILURES.append(f"{name}: max error {err:.2e} > {tol:.0e}")
        return f" (MISMATCH {err:.1e})"
    return ""


def header(bw, peak):
    import triton

    return [f"# gpu-check on {torch.cuda.get_device_name()} (torch {torch.__version__}, triton {triton.__version__})",
            f"device copy {bw:.0f} GB/s, bf16 matmul {peak:.0f} TFLOP/s (8192^3)"]


def sinkhorn_table(bw):
    rows = ["", "| Sinkhorn, 3 iterations | dtype | impl | median ms | vs swav_loop | GB/s (read S + write Q) | "
            "% of copy |", "|---|---|---|---|---|---|---|"]
    for shape in [(8, 4096, 100), (1, 65536, 3000)]:
        for dtype in (torch.float32, torch.bfloat16):
            s = (torch.rand(shape, device="cuda") * 2 - 1).to(dtype)
            bytes_ = 2 * s.numel() * s.element_size()
            impls = {b: (lambda b=b: _forced(b, skysense_fast.sinkhorn, s, 0.05, 3)) for b in ("cuda", "triton")}
            impls["swav_loop"] = lambda: torch.stack([swav_loop(s[b].float(), 0.05, 3) for b in range(s.shape[0])])
            times = {k: time_ms(f, reps=10) for k, f in impls.items()}
            ref = impls["swav_loop"]()
            for k in ("cuda", "triton"):
                status = checked(f"sinkhorn {k} {shape} {dtype}", impls[k](), ref,
                                 1e-5 if dtype == torch.float32 else 8e-3)
                gbs = bytes_ / times[k] / 1e6
                rows.append(f"| {'x'.join(map(str, shape))} | {str(dtype)[6:]} | {k}{status} | {times[k]:.3f} | "
                            f"{times['swav_loop'] / times[k]:.1f}x | {gbs:.0f} | {100 * gbs / bw:.0f}% |")
            rows.append(f"| {'x'.join(map(str, shape))} | {str(dtype)[6:]} | swav_loop | {times['swav_loop']:.3f} | "
                        "1.0x | | |")
    return rows


def _forced(backend, fn, *args, **kw):
    with skysense_fast.use_backend(backend):
        return fn(*args, **kw)


_FLEX = None


def flex_core(q, k, v, window, shift, logit_scale, bias):
    """FlexAttention over the partitioned windows; bias and shift mask in a score_mod."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention

    from skysense_fast.ops.window_attention_reference import LOGIT_SCALE_MAX, shift_mask

    global _FLEX
    if _FLEX is None:
        _FLEX = torch.compile(flex_attention, dynamic=False)
    B, H, W, nh, hd = q.shape
    N = window * window
    nW = (H // window) * (W // window)

    def windows(t):
        t = torch.roll(t, (-shift, -shift), (1, 2)) if shift else t
        return t.view(B, H // window, window, W // window, window, nh, hd).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, nh, N, hd)

    tau = torch.clamp(logit_scale.view(nh, 1, 1), max=LOGIT_SCALE_MAX).exp()
    qw = (F.normalize(windows(q).float(), dim=-1) * tau).to(q.dtype)
    kw = F.normalize(windows(k).float(), dim=-1).to(k.dtype)
    vw = windows(v)
    smask = shift_mask(H, W, (window, window), (shift, shift), q.device) if shift else torch.zeros(nW, N, N, device=q.device)

    def score_mod(score, b, h, i, j):
        return score + bias[h, i, j] + smask[b % nW, i, j]

    o = _FLEX(qw, kw, vw, score_mod=score_mod, scale=1.0)
    o = o.view(B, H // window, W // window, nh, window, window, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, nh, hd)
    return torch.roll(o, (shift, shift), (1, 2)) if shift else o


def _fwd_bwd(fn, params, go):
    return lambda: torch.autograd.grad(fn(), params, go)


def window_attention_table(peak):
    rows = ["", "| window attention, bf16, SwinV2-H | impl | fwd ms | fwd+bwd ms | fwd+bwd vs eager | "
            "fwd+bwd TFLOP/s | % of matmul |", "|---|---|---|---|---|---|---|"]
    for name, (B, H, W, nh) in {"stage1 2x128x128x8": (2, 128, 128, 8), "stage3 8x32x32x32": (8, 32, 32, 32)}.items():
        for shift in (0, 4):
            g = torch.Generator(device="cuda").manual_seed(0)
            proj = torch.randn(B, H, W, 3, nh, 44, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
            q, k, v = proj.unbind(3)  # what the module passes: views of one projection
            ls = torch.full((nh, 1, 1), 2.3, device="cuda").requires_grad_()
            bias = (16 * torch.rand(nh, 64, 64, device="cuda", generator=g)).requires_grad_()
            go = torch.randn_like(q)
            args = (q, k, v, 8, shift, ls, bias)
            impls = {"triton": lambda: skysense_fast.window_attention(q, k, v, 8, shift, logit_scale=ls, bias=bias),
                     "eager (timm)": lambda: window_eager(*args), "flex": lambda: flex_core(*args),
                     "sdpa + bias": lambda: window_sdpa(*args)}
            ref = impls["eager (timm)"]()
            flops = 4 * B * H * W * nh * 64 * 44 * 3.5  # fwd 2 GEMMs of N x N x hd per token row; bwd 2.5x
            times = {}
            for impl, fn in impls.items():
                try:
                    status = checked(f"window {impl} {name} {shift}", fn(), ref, 3e-2) if impl == "triton" else ""
                    times[impl] = (time_ms(fn, reps=10), time_ms(_fwd_bwd(fn, (proj, ls, bias), go), reps=10), status)
                except Exception as e:  # a baseline that cannot run here is reported, not fatal
                    rows.append(f"| {name} shift {shift} | {impl} | failed: {type(e).__name__}: {str(e)[:80]} | | | | |")
            for impl, (tf, tb, status) in times.items():
                vs = f"{times['eager (timm)'][1] / tb:.2f}x" if "eager (timm)" in times else ""
                rate = flops / tb / 1e9
                rows.append(f"| {name} shift {shift} | {impl}{status} | {tf:.3f} | {tb:.3f} | {vs} | {rate:.0f} | "
                            f"{100 * rate / peak:.0f}% |")
    return rows


def temporal_attention_table(bw):
    import torch.nn.functional as F

    from skysense_fast.ops import temporal_attention

    rows = ["", "| temporal attention, bf16, 31 tokens, 16 x 64, key padding | sequences | impl | fwd ms | "
            "fwd+bwd ms | fwd GB/s | % of copy |", "|---|---|---|---|---|---|---|"]
    T, nh, hd = 31, 16, 64
    for S in (65535, 262144):
        proj = torch.randn(S, T, 3, nh, hd, device="cuda", dtype=torch.bfloat16).requires_grad_()
        q, k, v = (t.transpose(1, 2) for t in proj.unbind(2))  # (S, heads, T, hd) views, as the layer passes
        mask = torch.rand(S, T, device="cuda") > 0.8
        mask[:, 0] = False
        go = torch.randn(S, nh, T, hd, device="cuda", dtype=torch.bfloat16)
        floor = 4 * S * T * nh * hd * 2  # read q, k, v and write o once

        def sdpa():  # in launches of at most 65,535 sequences, on the same views
            out = [F.scaled_dot_product_attention(q[i:i + 65535], k[i:i + 65535], v[i:i + 65535],
                                                  attn_mask=~mask[i:i + 65535, None, None, :])
                   for i in range(0, S, 65535)]
            return out[0] if len(out) == 1 else torch.cat(out)

        def flash():  # speed of light for the shape: SDPA's flash kernel cannot mask keys, so no padding
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                out = [F.scaled_dot_product_attention(q[i:i + 65535], k[i:i + 65535], v[i:i + 65535])
                       for i in range(0, S, 65535)]
            return out[0] if len(out) == 1 else torch.cat(out)

        impls = {"triton": lambda: temporal_attention(q, k, v, mask), "sdpa": sdpa, "sdpa flash, no mask": flash}
        ref = sdpa()
        for impl, fn in impls.items():
            status = checked(f"temporal {impl} {S}", fn(), ref, 2e-2) if impl == "triton" else ""
            tf, tb = time_ms(fn, reps=10), time_ms(_fwd_bwd(fn, (proj,), go), reps=5)
            rows.append(f"| | {S} | {impl}{status} | {tf:.3f} | {tb:.3f} | {floor / tf / 1e6:.0f} | "
                        f"{100 * floor / tf / 1e6 / bw:.0f}% |")
    return rows


def fusion_tokens_table(bw):
    from skysense_fast.ops.fusion_tokens import fusion_tokens, fusion_tokens_reference

    rows = ["", "| fusion tokens, bf16, 2816 ch, 32 x 32 grid, HR + 20 S2 + 10 S1 | impl | fwd ms | fwd+bwd ms | "
            "fwd GB/s | % of copy |", "|---|---|---|---|---|---|"]
    B, C, h, w, T2, T1 = 2, 2816, 32, 32, 20, 10
    bf = dict(device="cuda", dtype=torch.bfloat16)
    hr, s2, s1 = (torch.randn(*s, **bf).requires_grad_() for s in ((B, C, h, w), (B, T2, C, h, w), (B, T1, C, h, w)))
    table = torch.randn(365, C, **bf).requires_grad_()
    kw = dict(doy_s2=torch.randint(1, 367, (B, T2), device="cuda"), doy_s1=torch.randint(1, 367, (B, T1), device="cuda"),
              valid_s2=torch.rand(B, T2, device="cuda") > 0.2, valid_s1=torch.rand(B, T1, device="cuda") > 0.2,
              date_table=table)
    impls = {"triton": lambda: fusion_tokens(hr, s2, s1, **kw)[0], "eager": lambda: fusion_tokens_reference(hr, s2, s1, **kw)[0]}
    ref = impls["eager"]()
    go = torch.randn_like(ref)
    floor = 2 * ref.numel() * 2
    for impl, fn in impls.items():
        status = checked(f"fusion tokens {impl}", fn(), ref, 1e-2) if impl == "triton" else ""
        tf, tb = time_ms(fn, reps=10), time_ms(_fwd_bwd(fn, (hr, s2, s1, table), go), reps=5)
        rows.append(f"| | {impl}{status} | {tf:.3f} | {tb:.3f} | {floor / tf / 1e6:.0f} | {100 * floor / tf / 1e6 / bw:.0f}% |")
    return rows


def _model_inputs(B, g, dtype=torch.float32):
    return dict(hr=torch.randn(B, 3, 32 * g, 32 * g, device="cuda"), s2=torch.randn(B, 4, 10, g, g, device="cuda"),
                s1=torch.randn(B, 2, 2, g, g, device="cuda"), doy_s2=torch.randint(1, 367, (B, 4), device="cuda"),
                doy_s1=torch.randint(1, 367, (B, 2), device="cuda"), latlon=torch.tensor([[45.0, 7.0]] * B, device="cuda"))


def model_tables(peak):
    """The 2b model: how far bf16 features drift from fp32, and a training step (forward +
    backward, bf16 autocast, activation checkpointing) with its model FLOPs utilisation."""
    from torch.utils.flop_counter import FlopCounterMode

    from skysense_fast import models

    torch.manual_seed(0)
    m = models.create("skysense-2b").cuda()
    x = _model_inputs(2, 16)
    rows = ["", "| SkySense-2b, bf16 autocast vs fp32 | output | max abs err | rel. L2 err |", "|---|---|---|---|"]
    with torch.no_grad():
        ref = m.eval()(**x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = m(**x)
    for key in ("fused", "geo"):
        a, b = low[key].float(), ref[key].float()
        rel = ((a - b).norm() / b.norm()).item()
        if not rel < 5e-2:
            FAILURES.append(f"2b bf16 drift on {key}: relative L2 {rel:.2e}")
        rows.append(f"| HR 512 px, 4 S2 + 2 S1, batch 2 | {key} | {(a - b).abs().max().item():.2e} | {rel:.2e} |")
    m.train().set_grad_checkpointing(True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(**x)
        out["geo"].float().square().mean().backward()

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    t = time_ms(step, reps=5) / 1e3
    rows += ["", "| SkySense-2b training step, bf16, ckpt | batch | median s | samples/s | TFLOP/step | MFU |",
             "|---|---|---|---|---|---|",
             f"| HR 512 px, 4 S2 + 2 S1 | 2 | {t:.3f} | {2 / t:.2f} | {flops / 1e12:.2f} | "
             f"{100 * flops / t / (peak * 1e12):.1f}% |"]
    return rows


def pretrain_table():
    from pretrain_step_check import pretrain_step_rows

    return pretrain_step_rows("skysense-2b", "cuda")


def main() -> None:
    bw, peak = copy_bandwidth(), matmul_peak()
    emit(header(bw, peak))
    section(sinkhorn_table, bw)
    section(window_attention_table, peak)
    section(temporal_attention_table, bw)
    section(fusion_tokens_table, bw)
    section(model_tables, peak)
    section(pretrain_table)
    if FAILURES:
        print(f"\ngpu-check FAILED ({len(FAILURES)}):\n  " + "\n  ".join(FAILURES), flush=True)
        sys.exit(1)
    print("\ngpu-check: every table measured, every result within tolerance", flush=True)


if __name__ == "__main__":
    main()
