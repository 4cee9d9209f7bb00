"""Shifted-window attention, float32, SwinV2-H stage-1-like shapes scaled to a 2-core CPU
(window 8, 8 heads, head_dim 44, B=2, 64x64 tokens): the fused op against timm's eager way
and torch SDPA with an explicit bias + mask, forward and forward+backward; and a whole
SwinV2 block (dim 352) accelerated against timm's.

    pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch

import skysense_fast
import window_attention_baselines as wb

B, H, W, HEADS, HD, WIN = 2, 64, 64, 8, 44, 8
IMPLS = {"fused": lambda *a: skysense_fast.window_attention(a[0], a[1], a[2], a[3], a[4], logit_scale=a[5], bias=a[6]),
         "eager": wb.eager, "sdpa": wb.sdpa}


@functools.cache
def inputs(shift: int, grad: bool):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, W, HEADS, HD, generator=g).requires_grad_(grad) for _ in range(3))
    ls = torch.full((HEADS,), 2.3)
    bias = 16 * torch.rand(HEADS, WIN * WIN, WIN * WIN, generator=g)
    return (q, k, v, WIN, shift, ls, bias), torch.randn(B, H, W, HEADS, HD, generator=g)


def peak(impl: str, shift: int, mode: str) -> int:
    here = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, os.path.join(here, "peak_memory.py"), "window_attention", impl,
                          *map(str, (B, H, W, HEADS, HD, WIN, shift)), mode],
                         capture_output=True, text=True, check=True, cwd=here, env=dict(os.environ, PYTHONPATH=here))
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shift", [0, 4], ids=["unshifted", "shifted"])
def test_core_forward(benchmark, impl, shift):
    args, _ = inputs(shift, False)
    fn = IMPLS[impl]
    benchmark.group = f"window attention core fwd {'shifted' if shift else 'unshifted'} (2x64x64, 8 heads x 44, w8)"
    benchmark.extra_info["impl"] = impl
    if impl == "fused":
        torch.testing.assert_close(fn(*args), wb.eager(*args), rtol=1e-4, atol=1e-4)
        fused, eager = peak("fused", shift, "fwd"), peak("eager", shift, "fwd")
        benchmark.extra_info["peak_vs_eager"] = fused / eager
    benchmark.pedantic(fn, args=args, rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shift", [0, 4], ids=["unshifted", "shifted"])
def test_core_forward_backward(benchmark, impl, shift):
    args, grad = inputs(shift, True)
    fn = IMPLS[impl]
    benchmark.group = f"window attention core fwd+bwd {'shifted' if shift else 'unshifted'} (2x64x64, 8 heads x 44, w8)"
    benchmark.extra_info["impl"] = impl

    def step():
        return torch.autograd.grad(fn(*args), args[:3], grad)

    benchmark.pedantic(step, rounds=6, warmup_rounds=1)


@functools.cache
def blocks():
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block

    torch.manual_seed(0)
    ref = SwinTransformerV2Block(352, (H, W), 8, window_size=WIN, shift_size=WIN // 2).eval()
    fused = SwinTransformerV2Block(352, (H, W), 8, window_size=WIN, shift_size=WIN // 2).eval()
    fused.load_state_dict(ref.state_dict())
    skysense_fast.accelerate(fused)
    return {"fused": fused, "timm": ref}


@pytest.mark.parametrize("impl", ["fused", "timm"])
def test_swinv2_block_forward(benchmark, impl):
    pytest.importorskip("timm")
    mods = blocks()
    x = torch.randn(B, H, W, 352, generator=torch.Generator().manual_seed(0))
    benchmark.group = "SwinV2 block fwd, eval (2x64x64x352, 8 heads, w8 shifted)"
    benchmark.extra_info["impl"] = impl
    with torch.no_grad():
        if impl == "fused":
            torch.testing.assert_close(mods["fused"](x), mods["timm"](x), rtol=1e-4, atol=1e-4)
        benchmark.pedantic(mods[impl], args=(x,), rounds=10, warmup_rounds=2)
