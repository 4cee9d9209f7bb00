"""Whole-model forward on the CPU: the tiny and base configs with the fused ops against the
same model on the reference backend (plain PyTorch everywhere), float32, eval, one run.

    pytest benchmarks/ --benchmark-only          (profile: python benchmarks/profile_model.py)
"""

from __future__ import annotations

import functools

import pytest
import torch

import skysense_fast
from skysense_fast import models

# (batch, fusion grid h = w, S2 / S1 acquisitions)
SIZES = {"skysense-tiny": (2, 8, 6, 4), "skysense-base": (1, 8, 4, 2)}


@functools.cache
def setup(name: str):
    torch.manual_seed(0)
    m = models.create(name).eval()
    B, g, T1, T2 = SIZES[name]
    gen = torch.Generator().manual_seed(0)
    x = dict(hr=torch.randn(B, 3, 32 * g, 32 * g, generator=gen), s2=torch.randn(B, T1, 10, g, g, generator=gen),
             s1=torch.randn(B, T2, 2, g, g, generator=gen), doy_s2=torch.randint(1, 367, (B, T1), generator=gen),
             doy_s1=torch.randint(1, 367, (B, T2), generator=gen), latlon=torch.tensor([[45.0, 7.0]] * B))
    return m, x


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("name", list(SIZES))
def test_model_forward(benchmark, name, impl):
    m, x = setup(name)
    benchmark.group = f"{name} forward, eval (batch {SIZES[name][0]}, grid {SIZES[name][1]}^2)"
    benchmark.extra_info["impl"] = impl

    def run():
        with torch.no_grad():
            if impl == "reference":
                with skysense_fast.use_backend("reference"):
                    return m(**x)["geo"]
            return m(**x)["geo"]

    if impl == "fused":
        with torch.no_grad(), skysense_fast.use_backend("reference"):
            torch.testing.assert_close(run(), m(**x)["geo"], rtol=1e-3, atol=1e-3)
    benchmark.pedantic(run, rounds=5 if name.endswith("base") else 10, warmup_rounds=1)
