"""Large-scene embedding (tiny config, tile 256, overlap 64, CPU): tiles per second, and peak
memory as the scene grows 16x (1,024^2 -> 4,096^2 pixels), which must stay flat.

    pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

from skysense_fast import models  # noqa: E402
from skysense_fast.infer import embed_scene  # noqa: E402

DIR = tempfile.mkdtemp(prefix="skysense_bench_")


@functools.cache
def scene(size: int) -> str:
    path = os.path.join(DIR, f"scene_{size}.tif")
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True) as d:
        for r in range(0, size, 1024):  # written in strips: the generator itself stays small
            h = min(1024, size - r)
            d.write(rng.integers(0, 255, (3, h, size), dtype=np.uint8), window=((r, r + h), (0, size)))
    return path


def peak(size: int) -> int:
    here = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, os.path.join(here, "peak_memory.py"), "embed", scene(size),
                          os.path.join(DIR, f"out_{size}.tif")], capture_output=True, text=True, check=True, cwd=here,
                         env=dict(os.environ, PYTHONPATH=here))
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("impl", ["fused", "sequential"])
def test_embed_throughput(benchmark, impl):
    """Reads overlapped with compute (a prefetch thread) against the same run strictly in turn."""
    torch.manual_seed(0)
    model = models.create("skysense-tiny").eval()
    src = scene(2048)
    benchmark.group = "embed 2048^2 scene (tiny, tile 256 / overlap 64, 121 tiles)"
    benchmark.extra_info["impl"] = impl
    if impl == "fused":
        small, large = peak(1024), peak(4096)
        benchmark.extra_info["peak_4096_over_1024"] = large / small
        print(f"\npeak memory: 1024^2 {small / 2**20:.1f} MiB, 4096^2 {large / 2**20:.1f} MiB, ratio {large / small:.2f}")
    benchmark.pedantic(embed_scene, args=(model, src, os.path.join(DIR, f"bench_{impl}.tif")),
                       kwargs=dict(tile=256, overlap=64, batch_size=4, prefetch=impl == "fused"), rounds=3,
                       warmup_rounds=1)
