"""Fine-tuning and prediction throughput on the CPU: one UPerNet segmentation training step
(forward, cross-entropy, backward, AdamW) with the fused ops against the same step on the
reference backend (plain PyTorch everywhere), and ``predict`` over a 1024^2 scene (tile 256,
overlap 64: 25 tiles, blended class probabilities, a COG class map) both ways.

    pytest benchmarks/test_finetune_bench.py --benchmark-only
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

import skysense_fast
from skysense_fast.config import OptimSection
from skysense_fast.finetune import TaskSpec, build_task_model
from skysense_fast.infer.predict import predict_scene
from skysense_fast.train.loop import optimiser_step
from skysense_fast.train.optim import build_optimizer

DIR = tempfile.mkdtemp(prefix="skysense_ft_bench_")
SIZES = {"skysense-tiny": (4, 256, 64), "skysense-base": (2, 256, 256)}   # batch, crop, UPerNet width


def _backend(impl: str):
    return skysense_fast.use_backend("reference") if impl == "reference" else contextlib.nullcontext()


@functools.cache
def setup(name: str):
    B, crop, width = SIZES[name]
    torch.manual_seed(0)
    spec = TaskSpec("segmentation", tuple(range(1, 7)), tuple("abcdef"), name, head_channels=width)
    model = build_task_model(spec).train()
    optimizer = build_optimizer(model, OptimSection(lr=1e-4))
    x = torch.randn(B, 3, crop, crop)
    y = torch.randint(0, 6, (B, crop, crop))
    return model, optimizer, x, y


def run_step(name: str, impl: str) -> None:
    model, optimizer, x, y = setup(name)
    with _backend(impl):
        _, ok = optimiser_step(model, optimizer, lambda: {"total": model.loss(model(x), y)}, grad_clip=3.0)
    assert ok


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("name", list(SIZES))
def test_finetune_step(benchmark, name, impl):
    B, crop, width = SIZES[name]
    benchmark.group = f"{name} UPerNet fine-tune step (batch {B}, {crop}^2 crops, head width {width})"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["samples_per_step"] = B
    benchmark.pedantic(run_step, args=(name, impl), rounds=3 if name.endswith("base") else 6, warmup_rounds=1)


@functools.cache
def scene(size: int = 1024) -> str:
    path = os.path.join(DIR, f"scene_{size}.tif")
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True) as d:
        d.write(rng.integers(0, 255, (3, size, size), dtype=np.uint8))
    return path


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_predict_throughput(benchmark, impl):
    model, _, _, _ = setup("skysense-tiny")
    model.eval()
    benchmark.group = "predict 1024^2 scene (tiny, UPerNet 64, tile 256 / overlap 64, 25 tiles)"
    benchmark.extra_info["impl"] = impl

    def run():
        with _backend(impl):
            predict_scene(model, scene(), os.path.join(DIR, f"map_{impl}.tif"), batch_size=4)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
