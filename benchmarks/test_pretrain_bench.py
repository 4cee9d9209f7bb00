"""Pretraining throughput on the CPU: one full training step (two views through the student
and the EMA teacher, every loss, backward, AdamW, EMA) with the fused ops against the same
step on the reference backend (plain PyTorch everywhere), tiny and base configs, one run.

    pytest benchmarks/test_pretrain_bench.py --benchmark-only
    python benchmarks/pretrain_breakdown.py      (time share of each part)
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

import skysense_fast
from skysense_fast.pretrain import from_dict
from skysense_fast.train.optim import build_optimizer
from skysense_fast.pretrain.synthetic import SyntheticMultimodal
from skysense_fast.pretrain.trainer import build_model, make_teacher, step_views, train_step

# config name -> (batch, sample grid, view crop, S2 / S1 acquisitions)
SIZES = {"skysense-tiny": (2, 10, 8, 4), "skysense-base": (1, 10, 8, 4)}


@functools.cache
def pretrain_setup(name: str):
    B, grid, crop, T = SIZES[name]
    cfg = from_dict({"model": {"name": name}, "data": {"grid": grid, "crop": crop, "s2_frames": T, "s1_frames": T},
                     "loss": {"out_dim": 1024, "head_hidden": 512, "head_bottleneck": 128},
                     "train": {"batch_size": B, "device": "cpu"}})
    torch.manual_seed(0)
    student = build_model(cfg, torch.device("cpu"))
    teacher = make_teacher(student)
    optimizer = build_optimizer(student, cfg.optim)
    d = cfg.data
    data = SyntheticMultimodal(64, d.grid, d.s2_frames, d.s1_frames, d.classes, d.seed)
    views, geoms = step_views(data, cfg, 0, 0, 1, torch.device("cpu"))
    return cfg, student, teacher, optimizer, views, geoms


def run_step(name: str, impl: str) -> dict:
    _, student, teacher, optimizer, views, geoms = pretrain_setup(name)
    ctx = skysense_fast.use_backend("reference") if impl == "reference" else contextlib.nullcontext()
    with ctx:
        values, ok = train_step(student, teacher, optimizer, views, geoms, teacher_temp=0.04, momentum=0.996,
                                generator=torch.Generator().manual_seed(0), grad_clip=3.0)
    assert ok
    return values


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("name", list(SIZES))
def test_pretrain_step(benchmark, name, impl):
    B, grid, crop, T = SIZES[name]
    benchmark.group = f"{name} pretraining step (batch {B}, views {crop}^2 cells = {32 * crop}^2 HR px, T={T})"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["samples_per_step"] = B
    benchmark.pedantic(run_step, args=(name, impl), rounds=3 if name.endswith("base") else 8, warmup_rounds=1)
