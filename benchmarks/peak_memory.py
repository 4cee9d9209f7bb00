"""Peak resident memory of one call (Linux), in a fresh process.

    python benchmarks/peak_memory.py sinkhorn IMPL B N K
        prints (peak RSS during the call - RSS before it) / (bytes of the output)
    python benchmarks/peak_memory.py window_attention IMPL B H W HEADS HD WINDOW SHIFT [fwd|fwdbwd]
        prints the peak RSS increase in bytes
    python benchmarks/peak_memory.py embed SCENE.tif OUT.tif
        prints the peak RSS increase of `embed` (tiny config, tile 256) in bytes
"""

from __future__ import annotations

import resource
import sys

import torch


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to now
        f.write("5")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def sinkhorn_case(impl: str, B: int, N: int, K: int) -> None:
    import skysense_fast
    from sinkhorn_baselines import swav_loop

    s = torch.rand(B, N, K) * 2 - 1
    fns = {"fused": lambda: skysense_fast.sinkhorn(s, 0.05, 3),
           "swav_loop": lambda: [swav_loop(s[b], 0.05, 3) for b in range(B)]}
    skysense_fast.sinkhorn(torch.rand(2, 64, 8), 0.05, 3)  # load everything first
    before = rss_now()
    reset_peak()
    out = fns[impl]()
    peak = peak_rss()
    del out
    print((peak - before) / s.numel() / s.element_size())


def window_attention_case(impl: str, B, H, W, nh, hd, window, shift, mode="fwd") -> None:
    import skysense_fast
    import window_attention_baselines as wb

    q, k, v = (torch.randn(B, H, W, nh, hd, requires_grad=mode == "fwdbwd") for _ in range(3))
    ls = torch.full((nh,), 2.3)
    bias = 16 * torch.rand(nh, window * window)[:, :, None].expand(-1, -1, window * window).contiguous()
    fns = {"fused": lambda: skysense_fast.window_attention(q, k, v, window, shift, logit_scale=ls, bias=bias),
           "eager": lambda: wb.eager(q, k, v, window, shift, ls, bias),
           "sdpa": lambda: wb.sdpa(q, k, v, window, shift, ls, bias)}
    tiny = [t[:, :window, :window].detach().contiguous() for t in (q, k, v)]
    skysense_fast.window_attention(*tiny, window, 0)  # load everything first
    before = rss_now()
    reset_peak()
    out = fns[impl]()
    if mode == "fwdbwd":
        out.backward(torch.ones_like(out))
    print(peak_rss() - before)


def embed_case(scene: str, out: str) -> None:
    from skysense_fast import models
    from skysense_fast.infer import embed_scene

    torch.manual_seed(0)
    model = models.create("skysense-tiny").eval()
    before = rss_now()
    reset_peak()
    embed_scene(model, scene, out, tile=256, overlap=64, batch_size=4)
    print(peak_rss() - before)


def main() -> None:
    op, impl, *rest = sys.argv[1:]
    if op == "embed":
        embed_case(impl, *rest)
    elif op == "sinkhorn":
        sinkhorn_case(impl, *map(int, rest))
    else:
        window_attention_case(impl, *map(int, rest[:7]), *rest[7:])


if __name__ == "__main__":
    main()
