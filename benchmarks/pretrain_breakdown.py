"""Where a pretraining step's time goes (CPU): encoders, fusion, losses, Sinkhorn, backward,
optimiser, teacher EMA; fused ops and the reference backend side by side.

    python benchmarks/pretrain_breakdown.py [--config skysense-tiny] [--steps 5]

Forward parts are timed by wrapping the modules and functions (student and teacher alike);
"losses" is the rest of the forward (heads, alignment, pooling, centring); the backward is
the step's remainder, not split further (autograd runs the parts interleaved).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import defaultdict

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import skysense_fast  # noqa: E402
from skysense_fast.pretrain import losses, objective, prototypes, trainer  # noqa: E402
from test_pretrain_bench import SIZES, pretrain_setup  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)


def timed(name, fn):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMES[name] += time.perf_counter() - t0
    return wrapper


def instrument(student, teacher, optimizer):
    for model in (student, teacher):
        bb = model.backbone
        for part in ("hr", "s2", "s1", "head_s2", "head_s1"):
            m = getattr(bb, part)
            m.forward = timed("encoders", m.forward)
        bb.fusion.forward = timed("fusion", bb.fusion.forward)
    for mod in (losses, prototypes):
        mod.sinkhorn = timed("sinkhorn", mod.sinkhorn)
    student.forward = timed("forward", student.forward)
    optimizer.step = timed("optimizer", optimizer.step)
    trainer.ema_update = timed("ema", objective.ema_update)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="skysense-tiny", choices=list(SIZES))
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    _, student, teacher, optimizer, views, geoms = pretrain_setup(args.config)
    instrument(student, teacher, optimizer)
    print(f"{args.config}, batch {SIZES[args.config][0]}, {torch.get_num_threads()} threads; ms per step")
    print(f"{'part':<10}" + "".join(f"{impl:>22}" for impl in ("fused", "reference")))
    impls = ("fused", "reference")
    ctx = {"fused": contextlib.nullcontext, "reference": lambda: skysense_fast.use_backend("reference")}

    def step():
        trainer.train_step(student, teacher, optimizer, views, geoms, teacher_temp=0.04, momentum=0.996,
                           generator=torch.Generator().manual_seed(0))

    for impl in impls:                       # warm-up
        with ctx[impl]():
            step()
    acc = {impl: defaultdict(float) for impl in impls}
    for _ in range(args.steps):              # interleaved: drift on a shared machine hits both alike
        for impl in impls:
            TIMES.clear()
            t0 = time.perf_counter()
            with ctx[impl]():
                step()
            acc[impl]["step"] += time.perf_counter() - t0
            for k, v in TIMES.items():
                acc[impl][k] += v
    rows = {}
    for impl in impls:
        t = {k: v / args.steps for k, v in acc[impl].items()}
        rows[impl] = {"encoders": t["encoders"], "fusion": t["fusion"], "sinkhorn": t["sinkhorn"],
                      "losses": t["forward"] - t["encoders"] - t["fusion"] - t["sinkhorn"],
                      "backward": t["step"] - t["forward"] - t["optimizer"] - t["ema"],
                      "optimizer": t["optimizer"], "ema": t["ema"], "step": t["step"]}
    for part in rows["fused"]:
        cells = "".join(f"{rows[i][part] * 1e3:>12.1f} ({rows[i][part] / rows[i]['step']:>5.1%})" for i in rows)
        print(f"{part:<10}{cells}")
    print(f"speed-up of the step: {rows['reference']['step'] / rows['fused']['step']:.2f}x")


if __name__ == "__main__":
    main()
