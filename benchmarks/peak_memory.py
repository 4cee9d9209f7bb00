"""Peak resident memory of one call (Linux), in a fresh process: `python benchmarks/peak_memory.py
IMPL B N K` prints (peak RSS during the call - RSS before it) / (bytes of the output)."""

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


def main() -> None:
    impl, B, N, K = sys.argv[1], *map(int, sys.argv[2:5])
    import skysense_fast
    from sinkhorn_baselines import swav_loop

    s = torch.rand(B, N, K) * 2 - 1
    fns = {"fused": lambda: skysense_fast.sinkhorn(s, 0.05, 3),
           "swav_loop": lambda: [swav_loop(s[b], 0.05, 3) for b in range(B)]}
    tiny = torch.rand(2, 64, 8)
    skysense_fast.sinkhorn(tiny, 0.05, 3)  # load everything first
    before = rss_now()
    reset_peak()
    out = fns[impl]()
    peak = peak_rss()
    del out
    print((peak - before) / s.numel() / s.element_size())


if __name__ == "__main__":
    main()
