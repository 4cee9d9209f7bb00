"""One pretraining step of a SkySense config on one device, as `make gpu-check` measures it:
FSDP2 (one rank), activation checkpointing, bfloat16 autocast; samples/s, peak memory and
model FLOPs utilisation (FLOPs of one step counted by torch.utils.flop_counter: student
forward + backward and teacher forward; peak = the card's dense bf16 rate).

    python benchmarks/pretrain_step_check.py                                  # 2b on cuda
    python benchmarks/pretrain_step_check.py --config skysense-tiny --device cpu   # a dry run
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _single_rank_group(device: torch.device) -> None:
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def pretrain_step_rows(config: str = "skysense-2b", device: str = "cuda", batch: int = 2, grid: int = 16,
                       crop: int = 12, frames: int = 4, steps: int = 3) -> list[str]:
    from torch.utils.flop_counter import FlopCounterMode

    from skysense_fast.pretrain import from_dict
    from skysense_fast.train.optim import build_optimizer
    from skysense_fast.pretrain.synthetic import SyntheticMultimodal
    from skysense_fast.pretrain.trainer import build_model, make_teacher, shard, step_views, train_step

    dev = torch.device(device)
    rows = ["", f"| {config} pretraining step (FSDP2, ckpt, bf16) | batch | views | median s | samples/s | "
                "peak GiB | TFLOP/step | MFU |", "|---|---|---|---|---|---|---|---|"]
    views_txt = f"{32 * crop}^2 HR, {frames}+{frames} S2/S1"
    try:
        cfg = from_dict({"model": {"name": config},
                         "data": {"grid": grid, "crop": crop, "s2_frames": frames, "s1_frames": frames},
                         "loss": {"out_dim": 8192, "head_hidden": 2048, "head_bottleneck": 256},
                         "train": {"batch_size": batch, "precision": "bfloat16", "grad_checkpointing": True,
                                   "device": dev.type}})
        _single_rank_group(dev)
        torch.manual_seed(0)
        student = build_model(cfg, dev)
        teacher = make_teacher(student)
        shard(student, bf16_params=True)
        shard(teacher, bf16_params=True)
        optimizer = build_optimizer(student, cfg.optim)
        data = SyntheticMultimodal(16, grid, frames, frames, seed=0)
        views, geoms = step_views(data, cfg, 0, 0, 1, dev)

        def step():
            values, ok = train_step(student, teacher, optimizer, views, geoms, teacher_temp=0.04, momentum=0.996,
                                    generator=torch.Generator().manual_seed(0), grad_clip=3.0, bf16=True)
            if not ok:
                raise RuntimeError(f"non-finite loss: {values}")

        step()                                               # warm-up (allocations, kernel compiles)
        with FlopCounterMode(display=False) as fc:
            step()
        flops = fc.get_total_flops()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        t = sorted(times)[len(times) // 2]
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        peak = _peak(dev)
        mfu = f"{100 * flops / t / peak:.1f}%" if peak else "n/a"
        rows.append(f"| {config} | {batch} | {views_txt} | {t:.3f} | {batch / t:.2f} | {peak_mem:.1f} | "
                    f"{flops / 1e12:.2f} | {mfu} |")
    except Exception as e:  # a row that says what failed, not a lost table
        rows.append(f"| failed: {type(e).__name__}: {str(e)[:160]} | | | | | | | |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="skysense-2b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--crop", type=int, default=12)
    p.add_argument("--frames", type=int, default=4)
    a = p.parse_args()
    print("\n".join(pretrain_step_rows(a.config, a.device, a.batch, a.grid, a.crop, a.frames)))


if __name__ == "__main__":
    main()
