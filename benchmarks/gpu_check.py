"""GPU benchmark for `make gpu-check`: Sinkhorn-Knopp (float32 and bf16, 3 iterations) with
the CUDA C++ and Triton kernels against the SwAV loop on the GPU, in one table, with the
fraction of the card's device-to-device copy bandwidth reached (floor: one read of the
scores and one write of Q per call). Writes the table to $OUT/gpu_check.md when OUT is set.
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
    table = "\n".join(rows)
    print(table)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_check.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
