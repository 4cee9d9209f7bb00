"""GPU benchmark for `make gpu-check`, one markdown table per op (written to
$OUT/gpu_check.md when OUT is set):

* Sinkhorn-Knopp (float32 and bf16, 3 iterations): the CUDA C++ and Triton kernels against
  the SwAV loop, with the fraction of the card's device-to-device copy bandwidth reached
  (floor: one read of the scores and one write of Q per call);
* window attention (bf16, SwinV2-H stage-1 and stage-3 shapes, forward+backward of the core):
  the Triton kernel against timm's eager arithmetic and FlexAttention (compiled, bias and
  shift mask as score_mod).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import skysense_fast  # noqa: E402
from sinkhorn_baselines import swav_loop  # noqa: E402

SHAPES = [(8, 4096, 100), (1, 65536, 3000)]


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
    ms = time_ms(lambda: y.copy_(x), reps=10)
    return 2 * x.numel() * 4 / ms / 1e6  # GB/s


def flex_core(q, k, v, window, shift, logit_scale, bias):
    """FlexAttention over the partitioned windows; bias and shift mask in a score_mod."""
    import torch.nn.functional as F

    from skysense_fast.ops.window_attention_reference import LOGIT_SCALE_MAX, shift_mask

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

    o = _compiled_flex()(qw, kw, vw, score_mod=score_mod, scale=1.0)
    o = o.view(B, H // window, W // window, nh, window, window, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, nh, hd)
    return torch.roll(o, (shift, shift), (1, 2)) if shift else o


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def window_attention_table() -> list[str]:
    from skysense_fast.ops.window_attention_reference import window_attention_reference

    rows = ["", "| window attention core, bf16 fwd+bwd | impl | median ms | vs eager | vs flex |", "|---|---|---|---|---|"]
    # SwinV2-H: head_dim 44, window 8; stage 1 (8 heads) and stage 3 (32 heads) of a 512 px tile
    for name, (B, H, W, nh) in {"stage1 2x128x128x8": (2, 128, 128, 8), "stage3 8x32x32x32": (8, 32, 32, 32)}.items():
        for shift in (0, 4):
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(B, H, W, nh, 44, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
                       for _ in range(3))
            ls = torch.full((nh,), 2.3, device="cuda")
            bias = 16 * torch.rand(nh, 64, 64, device="cuda", generator=g)
            go = torch.randn_like(q)
            impls = {"triton": lambda: skysense_fast.window_attention(q, k, v, 8, shift, logit_scale=ls, bias=bias),
                     "eager": lambda: window_attention_reference(q, k, v, (8, 8), (shift, shift), ls, bias),
                     "flex": lambda: flex_core(q, k, v, 8, shift, ls, bias)}
            times = {}
            for impl, fn in impls.items():
                try:
                    times[impl] = time_ms(lambda: torch.autograd.grad(fn(), (q, k, v), go), reps=10)
                except Exception as e:  # a baseline that cannot run here is reported, not fatal
                    times[impl] = None
                    print(f"{impl} failed: {type(e).__name__}: {str(e)[:200]}")
            ref = impls["eager"]().float()
            err = (impls["triton"]().float() - ref).abs().max().item()
            for impl, t in times.items():
                if t is None:
                    rows.append(f"| {name} shift {shift} | {impl} | n/a | | |")
                    continue
                vs = lambda other: f"{times[other] / t:.2f}x" if times.get(other) else ""  # noqa: E731
                extra = f" (max err {err:.1e})" if impl == "triton" else ""
                rows.append(f"| {name} shift {shift} | {impl}{extra} | {t:.3f} | {vs('eager')} | {vs('flex')} |")
    return rows


def temporal_attention_table(bw: float) -> list[str]:
    """262,144 per-pixel sequences (a 512 x 512 fusion grid) of 31 tokens, bf16, 16 heads x 64:
    past the 65,535-sequence limit of fused attention launches. Floor: read q, k, v once and
    write o once."""
    import torch.nn.functional as F

    from skysense_fast.ops import temporal_attention

    rows = ["", "| temporal attention, bf16, 262144 x 31 tokens, 16 x 64 | impl | median ms | GB/s | % of copy BW |",
            "|---|---|---|---|---|"]
    S, T, nh, hd = 262144, 31, 16, 64
    proj = torch.randn(S, T, 3, nh, hd, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.transpose(1, 2) for t in proj.unbind(2))
    mask = torch.rand(S, T, device="cuda") > 0.8
    mask[:, 0] = False
    floor = 4 * S * T * nh * hd * 2
    fused = lambda: temporal_attention(q, k, v, mask)  # noqa: E731

    def sdpa_chunks():  # SDPA in launches of at most 65,535 sequences
        out = []
        for i in range(0, S, 65535):
            sl = slice(i, i + 65535)
            out.append(F.scaled_dot_product_attention(q[sl].contiguous(), k[sl].contiguous(), v[sl].contiguous(),
                                                      attn_mask=~mask[sl, None, None, :]))
        return torch.cat(out)

    for name, fn in (("triton", fused), ("sdpa (65,535-sequence chunks)", sdpa_chunks)):
        try:
            t = time_ms(fn, reps=10)
            rows.append(f"| | {name} | {t:.3f} | {floor / t / 1e6:.0f} | {100 * floor / t / 1e6 / bw:.0f}% |")
        except Exception as e:
            rows.append(f"| | {name} | failed: {type(e).__name__} | | |")
    return rows


def model_training_table() -> list[str]:
    """The 2b model's training step (forward + backward, bf16 autocast, activation
    checkpointing) at a reduced size: HR 512 px (fusion grid 16 x 16), 4 S2 + 2 S1
    acquisitions, batch 2. Samples/s and model FLOPs utilisation (FLOPs counted by
    torch.utils.flop_counter on one step; peak: the card's dense bf16 rate, 989 TFLOP/s)."""
    from torch.utils.flop_counter import FlopCounterMode

    from skysense_fast import models

    rows = ["", "| SkySense-2b training step, bf16, ckpt | batch | median s | samples/s | TFLOP/step | MFU |",
            "|---|---|---|---|---|---|"]
    try:
        torch.manual_seed(0)
        m = models.create("skysense-2b").cuda().train().set_grad_checkpointing(True)
        B, g = 2, 16
        x = dict(hr=torch.randn(B, 3, 32 * g, 32 * g, device="cuda"), s2=torch.randn(B, 4, 10, g, g, device="cuda"),
                 s1=torch.randn(B, 2, 2, g, g, device="cuda"), doy_s2=torch.randint(1, 367, (B, 4), device="cuda"),
                 doy_s1=torch.randint(1, 367, (B, 2), device="cuda"), latlon=torch.tensor([[45.0, 7.0]] * B, device="cuda"))

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = m(**x)
            out["geo"].float().square().mean().backward()

        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops()
        t = time_ms(step, reps=5) / 1e3
        rows.append(f"| HR 512 px, 4 S2 + 2 S1 | {B} | {t:.3f} | {B / t:.2f} | {flops / 1e12:.2f} | "
                    f"{100 * flops / t / 989e12:.1f}% |")
    except Exception as e:
        rows.append(f"| failed: {type(e).__name__}: {str(e)[:120]} | | | | | |")
    return rows


def main() -> None:
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    rows = [f"# Sinkhorn-Knopp on {dev} (torch {torch.__version__}), copy bandwidth {bw:.0f} GB/s", "",
            "| shape | dtype | impl | median ms | vs swav_loop | GB/s (read S + write Q) | % of copy BW |",
            "|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            s = (torch.rand(shape, device="cuda") * 2 - 1).to(dtype)
            bytes_ = 2 * s.numel() * s.element_size()
            impls = {}
            for backend in ("cuda", "triton"):
                def fn(backend=backend):
                    with skysense_fast.use_backend(backend):
                        return skysense_fast.sinkhorn(s, 0.05, 3)
                impls[backend] = fn
            impls["swav_loop"] = lambda: [swav_loop(s[b].float(), 0.05, 3) for b in range(s.shape[0])]
            times = {k: time_ms(f) for k, f in impls.items()}
            ref = impls["swav_loop"]()
            for k in ("cuda", "triton"):
                err = (impls[k]().float() - torch.stack(ref)).abs().max().item()
                tol = 1e-5 if dtype == torch.float32 else 8e-3
                status = "" if err < tol else f" (MISMATCH {err:.1e})"
                gbs = bytes_ / times[k] / 1e6
                rows.append(f"| {'x'.join(map(str, shape))} | {str(dtype)[6:]} | {k}{status} | {times[k]:.3f} | "
                            f"{times['swav_loop'] / times[k]:.1f}x | {gbs:.0f} | {100 * gbs / bw:.0f}% |")
            rows.append(f"| {'x'.join(map(str, shape))} | {str(dtype)[6:]} | swav_loop | {times['swav_loop']:.3f} | 1.0x | | |")
    rows += window_attention_table()
    rows += temporal_attention_table(bw)
    rows += model_training_table()
    from pretrain_step_check import pretrain_step_rows

    rows += pretrain_step_rows("skysense-2b", "cuda")
    table = "\n".join(rows)
    print(table)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_check.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
