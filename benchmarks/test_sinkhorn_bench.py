"""Sinkhorn-Knopp, float32, 3 iterations: the fused kernel against the SwAV loop and the
log-domain reference, at SkySense's prototype shapes (B problems x N samples x K prototypes).

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
from skysense_fast.ops import sinkhorn_reference
from sinkhorn_baselines import swav_loop

SHAPES = {
    "8x4096x100": (8, 4096, 100),      # per-image object-level clustering / per-region prototypes
    "1x65536x3000": (1, 65536, 3000),  # a large prototype bank over many pixels
}
ROUNDS = {"8x4096x100": 20, "1x65536x3000": 3}
IMPLS = {
    "fused": lambda s: skysense_fast.sinkhorn(s, 0.05, 3),
    # the same kernel writing into a buffer reused across calls (as a training loop would)
    "fused_out": lambda s: skysense_fast.sinkhorn(s, 0.05, 3, out=out_buffer(s)),
    "swav_loop": lambda s: [swav_loop(s[b], 0.05, 3) for b in range(s.shape[0])],
    "reference": lambda s: sinkhorn_reference(s, 0.05, 3),
}
SKIP = {("1x65536x3000", "reference")}  # several GB of temporaries, tens of seconds


@functools.cache
def _out_buffer(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def out_buffer(s: torch.Tensor) -> torch.Tensor:
    return _out_buffer(tuple(s.shape), s.dtype)


@functools.cache
def scores(shape_name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(SHAPES[shape_name], generator=g) * 2 - 1


def peak_extra_over_output(shape) -> float:
    here = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, os.path.join(here, "peak_memory.py"), "sinkhorn", "fused", *map(str, shape)],
                         capture_output=True, text=True, check=True, cwd=here,
                         env=dict(os.environ, PYTHONPATH=here)).stdout
    return float(out.split()[-1]) - 1.0  # minus the output itself


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_sinkhorn(benchmark, shape_name, impl):
    if (shape_name, impl) in SKIP:
        pytest.skip("baseline too slow / too large at this shape")
    s = scores(shape_name)
    fn = IMPLS[impl]
    benchmark.group = f"sinkhorn {shape_name} fp32 eps=0.05 3 iters"
    benchmark.extra_info["impl"] = impl
    if impl.startswith("fused"):
        q = fn(s)
        q_ref = torch.stack([swav_loop(s[b].double(), 0.05, 3) for b in range(s.shape[0])])
        err = (q.double() - q_ref).abs().max().item()
        assert err < 1e-5, err
        benchmark.extra_info["max_abs_err_vs_swav_f64"] = err
        if impl == "fused":
            benchmark.extra_info["peak_extra_over_output"] = peak_extra_over_output(SHAPES[shape_name])
    benchmark.pedantic(fn, args=(s,), rounds=ROUNDS[shape_name], warmup_rounds=1)
