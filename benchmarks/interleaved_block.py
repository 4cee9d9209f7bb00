"""A SwinV2 block (dim 352, 2x64x64, window 8 shifted, eval) accelerated against timm's,
timed call by call in alternation (A B A B ...), which cancels most of a shared machine's
drift. `python benchmarks/interleaved_block.py [calls]` prints medians and the ratio."""

from __future__ import annotations

import sys
import time

import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2Block

import skysense_fast


def main(calls: int = 12) -> None:
    torch.manual_seed(0)
    ref = SwinTransformerV2Block(352, (64, 64), 8, window_size=8, shift_size=4).eval()
    fused = SwinTransformerV2Block(352, (64, 64), 8, window_size=8, shift_size=4).eval()
    fused.load_state_dict(ref.state_dict())
    skysense_fast.accelerate(fused)
    x = torch.randn(2, 64, 64, 352)
    times: dict[str, list[float]] = {"fused": [], "timm": []}
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), rtol=1e-4, atol=1e-4)
        for _ in range(calls):
            for name, m in (("fused", fused), ("timm", ref)):
                t = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    print(f"SwinV2 block fwd: fused {med['fused']:.1f} ms, timm {med['timm']:.1f} ms, "
          f"{med['timm'] / med['fused']:.2f}x (medians of {calls} interleaved calls)")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
