"""Does this package's pretraining teach anything on real imagery?

The tiny model is pretrained HR-only (``configs/pretrain/neon-hr-tiny.yaml``: unlabelled 10 cm
NEON images of Yellowstone and Soaproot Saddle) for a CPU-sized budget; the same model at
random init is the control. Both are probed the same way on a real labelled task of another
site: tree crowns vs background on OSBS_029 (Florida; ``configs/finetune/crowns-tiny.yaml``
with ``task.mode: linear_probe``: the backbone frozen, a BatchNorm and a 1 x 1 convolution
over the HR stages), scored on held-out spatial blocks. Each seed is its own pretraining,
its own random init and its own probe; the same seed gives both arms the same split.

    make sample && .venv/bin/python benchmarks/learning_check.py            # ~10 min on 2 cores

Writes ``build/learning_check.json`` and prints the table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import skysense_fast.finetune  # everything the runs import, loaded before they start
import skysense_fast.infer
import skysense_fast.pretrain
import skysense_fast.weights  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("overall_accuracy", "kappa", "miou", "crown_iou")


def _probe(weights: str | None, seed: int, steps: int, lr: float, out_dir: str) -> dict:
    from skysense_fast.finetune import finetune
    from skysense_fast.finetune.config import load_config

    overrides = {"task.mode": "linear_probe", "train.seed": seed, "train.steps": steps, "train.out_dir": out_dir,
                 "train.evaluate_every": steps, "train.checkpoint_every": 0, "train.progress": False,
                 "optim.lr": lr, "optim.warmup_steps": 0}
    if weights is not None:
        overrides["model.weights"] = weights
    cfg = load_config(os.path.join(ROOT, "configs/finetune/crowns-tiny.yaml"), overrides)
    v = finetune(cfg, resume=False)["validation"]
    return {"overall_accuracy": v["overall_accuracy"], "kappa": v["kappa"], "miou": v["miou"],
            "crown_iou": v["iou"]["crown"]}


def _pretrain(seed: int, steps: int, out_dir: str) -> tuple[str, float, float]:
    from skysense_fast.pretrain import load_config, pretrain

    cfg = load_config(os.path.join(ROOT, "configs/pretrain/neon-hr-tiny.yaml"),
                      {"train.seed": seed, "train.steps": steps, "train.out_dir": out_dir,
                       "train.checkpoint_every": 0, "train.progress": False})
    res = pretrain(cfg, resume=False)
    if res["status"] != "done" or not res["weights"]:   # never probe random weights as "pretrained"
        raise RuntimeError(f"pretraining seed {seed} ended {res['status']} at step {res['step']} without weights")
    first = statistics.mean(r["total"] for r in res["losses"][:10])
    last = statistics.mean(r["total"] for r in res["losses"][-10:])
    return res["weights"], first, last


def _summary(runs: list[dict], arm: str) -> dict:
    out = {}
    for m in METRICS:
        values = [r[arm][m] for r in runs]
        out[m] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                  "min": min(values), "max": max(values)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--probe-steps", type=int, default=100)
    p.add_argument("--probe-lr", type=float, default=0.01)
    p.add_argument("--out", default=os.path.join(ROOT, "build", "learning_check.json"))
    args = p.parse_args(argv)
    from skysense_fast.data.sample import CROWNS_RASTER, PRETRAIN_MANIFEST, hr_sample

    if hr_sample() is None or not CROWNS_RASTER.exists() or not PRETRAIN_MANIFEST.exists():
        print("learning_check: the NEON sample is not prepared: run `make sample` first", file=sys.stderr)
        return 2
    args.out = os.path.abspath(args.out)
    os.chdir(ROOT)   # the configs name their data from the project root
    work = os.path.join(os.path.dirname(args.out), "learning_check")
    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        weights, first, last = _pretrain(seed, args.pretrain_steps, os.path.join(work, f"pretrain-{seed}"))
        t_pre = time.perf_counter() - t0
        pre = _probe(weights, seed, args.probe_steps, args.probe_lr, os.path.join(work, f"probe-pretrained-{seed}"))
        rnd = _probe(None, seed, args.probe_steps, args.probe_lr, os.path.join(work, f"probe-random-{seed}"))
        runs.append({"seed": seed, "pretrain_seconds": round(t_pre, 1), "pretrain_loss_first10": first,
                     "pretrain_loss_last10": last, "pretrained": pre, "random_init": rnd})
        print(f"seed {seed}: pretrained {pre} | random init {rnd} | pretraining {t_pre:.0f} s, loss {first:.3f} -> "
              f"{last:.3f}", flush=True)
    result = {"config": vars(args) | {"out": os.path.relpath(args.out, ROOT)}, "runs": runs,
              "pretrained": _summary(runs, "pretrained"), "random_init": _summary(runs, "random_init")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".partial"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print("\n| linear probe, held-out blocks | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for arm in ("pretrained", "random_init"):
        s = result[arm]
        cells = [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f} ({s[m]['min']:.3f}-{s[m]['max']:.3f})" for m in METRICS]
        print(f"| {arm.replace('_', ' ')} | " + " | ".join(cells) + " |")
    print(f"\n{len(runs)} seeds; mean ± sample std (range). Written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
