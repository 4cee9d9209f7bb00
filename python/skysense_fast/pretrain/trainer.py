"""The pretraining loop: one process, or data-parallel with FSDP2 under ``torchrun``.

Determinism that resuming and data parallelism rely on: the data of step s is the global
batch of samples [s B, (s + 1) B) (mod the dataset), each view drawn from a generator
seeded by (seed, step, sample, view) — not from a global RNG — so a resumed run sees what
the uninterrupted one saw, and rank r of N simply takes its slice of the batch. Every loss
is a mean over samples (``losses.distill_loss``), the centres and the prototype bank
all-reduce their sums, and FSDP averages gradients: N ranks compute what one process does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist

from .. import models
from ..backends import use_backend
from .augment import collate, make_view
from .checkpoint import check_resumable, complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import PretrainConfig, validate
from .objective import SkySensePretrainer, ema_update, make_teacher
from .optim import build_optimizer, build_scheduler, cosine_schedule
from .synthetic import SyntheticMultimodal
from ..errors import InputError


def _init_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("config: train.device is cuda but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def shard(module: SkySensePretrainer, mesh=None, bf16_params: bool = False) -> None:
    """FSDP2 per block: every Swin block, ViT layer, fusion layer and head, then the root.

    ``bf16_params``: gather parameters in bfloat16 for the forward and backward (the shards,
    the optimiser and the teacher EMA stay float32; gradients are reduced in float32): half
    the all-gather traffic and no per-op weight casts under autocast.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from .losses import DINOHead

    kw = {"mesh": mesh}
    if bf16_params:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for m in [*module.backbone.blocks(), *(m for m in module.modules() if isinstance(m, DINOHead))]:
        fully_shard(m, **kw)  # the blocks the model states, then the pretraining heads
    fully_shard(module, **kw)


def build_model(cfg: PretrainConfig, device: torch.device) -> SkySensePretrainer:
    with device:  # initialise where it will train: a 2B model's init on the host takes minutes
        backbone = models.create(cfg.model.name, **cfg.model.overrides)
    if cfg.model.weights:
        from ..weights import load_any

        load_any(backbone, cfg.model.weights)
    if cfg.train.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    with device:
        return SkySensePretrainer(backbone, cfg.loss).to(device)


def make_dataset(cfg: PretrainConfig):
    """The config's dataset: synthetic, or windows of real scenes (``data.kind: scenes``)."""
    d = cfg.data
    if d.kind == "scenes":
        from .config import scene_list
        from .scenes import SceneDataset

        scenes = scene_list(d.manifest) if d.manifest else [{"hr": d.hr, "s2": d.s2, "s1": d.s1}]
        parts = [SceneDataset(sc["hr"], sc["s2"], sc["s1"], d.grid, d.s2_frames, d.s1_frames, d.stride or None,
                              d.hr_scale)
                 for sc in scenes]
        return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    return SyntheticMultimodal(d.samples, d.grid, d.s2_frames, d.s1_frames, d.classes, d.seed)


def seed_of(*numbers: int) -> int:
    """A 63-bit seed mixed from non-negative ints, the same in every process (unlike hash())."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> 1)


def step_views(dataset, cfg: PretrainConfig, step: int, rank: int, world: int, device: torch.device):
    """The batched views (and geometries) of this rank's slice of step ``step``'s batch: two
    global views, then ``data.local_crops`` local ones."""
    B = cfg.train.batch_size
    local = B // world
    n_views = 2 + cfg.data.local_crops   # two global views, then the student-only local ones
    views: list[list] = [[] for _ in range(n_views)]
    geoms: list[list] = [[] for _ in range(n_views)]
    for i in range(rank * local, (rank + 1) * local):
        index = (step * B + i) % len(dataset)
        sample = dataset[index]
        for v in range(n_views):
            g = torch.Generator().manual_seed(seed_of(cfg.data.seed, cfg.train.seed, step, index, v))
            crop = cfg.data.crop if v < 2 else cfg.data.local_crop
            view, geom = make_view(sample, crop, cfg.data.min_frames, g)
            view["index"] = torch.tensor(index)
            views[v].append(view)
            geoms[v].append(geom)
    return ([{k: x.to(device) for k, x in collate(vs).items()} for vs in views],
            [torch.stack(gs) for gs in geoms])


class _StepBatches(torch.utils.data.Dataset):
    """Step k of a run -> that step's views for one rank (CPU tensors): what DataLoader
    workers prepare ahead of the training loop. Deterministic per step, so workers, resuming
    and the rank count change nothing."""

    def __init__(self, dataset, cfg: PretrainConfig, start: int, rank: int, world: int):
        self.dataset, self.cfg, self.start, self.rank, self.world = dataset, cfg, start, rank, world

    def __len__(self) -> int:
        return self.cfg.train.steps - self.start

    def __getitem__(self, k: int):
        return step_views(self.dataset, self.cfg, self.start + k, self.rank, self.world, torch.device("cpu"))


def step_batches(dataset, cfg: PretrainConfig, start: int, rank: int, world: int, device: torch.device):
    """Iterator over (views, geoms) for steps start, start + 1, ...: in this process, or
    prepared by ``train.num_workers`` DataLoader workers (pinned memory on CUDA)."""
    if cfg.train.num_workers == 0:
        for step in range(start, cfg.train.steps):
            yield step_views(dataset, cfg, step, rank, world, device)
        return
    loader = torch.utils.data.DataLoader(_StepBatches(dataset, cfg, start, rank, world), batch_size=None,
                                         num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=2, persistent_workers=False)
    for views, geoms in loader:
        yield [{k: x.to(device, non_blocking=True) for k, x in v.items()} for v in views], geoms


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled and sys.stderr.isatty()

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.enabled:
            done = step + 1
            bar = "#" * int(30 * done / self.total)
            print(f"\r[{bar:<30}] {done}/{self.total} loss {loss:.4f} {rate:.1f} samples/s", end="", file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _all_mean(values: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(values)
        values /= world
    return values


def train_step(student, teacher, optimizer, views, geoms, *, teacher_temp: float, momentum: float,
               generator: torch.Generator, grad_clip: float = 0.0, bf16: bool = False,
               world: int = 1) -> tuple[dict[str, float], bool]:
    """One optimiser step: losses, backward, clipping, AdamW, teacher EMA.

    Returns (loss parts averaged over ranks, ok). When a loss is not finite on any rank
    nothing is updated and ok is False (every rank agrees: the check is on reduced values).
    """
    device_type = views[0]["hr"].device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        parts = student(views, geoms, teacher, teacher_temp, generator)
    names = sorted(parts)
    reduced = _all_mean(torch.stack([parts[n].detach().float() for n in names]), world)
    values = dict(zip(names, reduced.tolist()))
    if not torch.isfinite(reduced).all():
        return values, False
    optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    optimizer.step()
    ema_update(teacher, student, momentum)
    return values, True


def _resume(ckpt_dir, cfg, student, teacher, optimizer, scheduler, log):
    """(step, path) from the newest checkpoint that loads; one that does not (a damaged file)
    is reported and the one before it tried, down to the oldest kept."""
    newest = latest_checkpoint(ckpt_dir)
    candidates = [newest] + [p for p in reversed(complete_checkpoints(ckpt_dir)) if p != newest]
    errors = []
    for path in candidates:
        try:
            try:
                check_resumable(path, cfg.to_dict())  # another model: an error, never a fall-back
            except json.JSONDecodeError as e:
                raise RuntimeError(f"damaged trainer state ({e})") from None
            return load_checkpoint(path, student, teacher, optimizer, scheduler)["step"], path
        except (RuntimeError, OSError) as e:
            errors.append(f"{path}: {' '.join(str(e).split())[:300]}")
            if log is not None:
                log(f"warning: cannot resume from {path} ({errors[-1]}); trying the checkpoint before it")
    raise RuntimeError("no checkpoint in " + ckpt_dir + " loads:\n  " + "\n  ".join(errors)
                       + "\n(use --no-resume, or another train.out_dir, to start over)")


def _trim_metrics(path: str, start: int) -> None:
    """Drops the lines of steps >= start (a resumed run logs them again), atomically."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("step", -1) < start:
                keep.append(line)
        except ValueError:  # a torn last line of a killed run
            continue
    if len(keep) != len(lines):
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def pretrain(cfg: PretrainConfig, *, resume: bool = True, stop_after: int | None = None,
             log=print) -> dict:
    """Run (or continue) the pretraining described by ``cfg``.

    Writes ``<out_dir>/metrics.jsonl`` (one line per logged step: every loss part, lr,
    teacher momentum, samples/s) and checkpoints under ``<out_dir>/checkpoints``. With
    ``resume`` it continues from the latest complete checkpoint there. ``stop_after`` ends
    the run after that many steps of this call (as an interruption would), without the
    final checkpoint. Returns {"status": "done" | "stopped" | "nan", "step", "losses"}.
    """
    device = _device(cfg.train.device)
    rank, world = _init_distributed(device)
    validate(cfg, world)
    torch.manual_seed(cfg.train.seed)          # same initial weights on every rank
    student = build_model(cfg, device)
    teacher = make_teacher(student)
    if world > 1:
        bf16 = cfg.train.precision == "bfloat16"
        shard(student, bf16_params=bf16)
        shard(teacher, bf16_params=bf16)
    optimizer = build_optimizer(student, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.steps)
    out_dir, ckpt_dir = cfg.train.out_dir, os.path.join(cfg.train.out_dir, "checkpoints")
    start = 0
    if resume and latest_checkpoint(ckpt_dir) is not None:
        start, path = _resume(ckpt_dir, cfg, student, teacher, optimizer, scheduler, log if rank == 0 else None)
        if rank == 0:
            log(f"resumed from {path} at step {start}")
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
        _trim_metrics(os.path.join(out_dir, "metrics.jsonl"), start)
    dataset = make_dataset(cfg)
    lo, o, t = cfg.loss, cfg.optim, cfg.train
    backend = contextlib.nullcontext() if t.backend == "auto" else use_backend(t.backend)
    progress = _Progress(t.steps, t.progress and rank == 0)
    losses: list[dict] = []
    status, step = "done", start
    metrics = open(os.path.join(out_dir, "metrics.jsonl"), "a") if rank == 0 else None
    student.train()
    teacher.train()
    batches = step_batches(dataset, cfg, start, rank, world, device)
    try:
        for step in range(start, t.steps):
            if stop_after is not None and step - start >= stop_after:
                status = "stopped"
                break
            t0 = time.perf_counter()
            views, geoms = next(batches)
            teacher_temp = cosine_schedule(step, t.steps, lo.teacher_temp, lo.teacher_temp, lo.teacher_temp_warmup_steps,
                                           lo.teacher_temp_warmup_from)
            gen = torch.Generator().manual_seed(seed_of(cfg.train.seed, step, 2))  # same pixels on every rank
            momentum = cosine_schedule(step, t.steps, o.teacher_momentum, o.teacher_momentum_final)
            with backend:
                values, ok = train_step(student, teacher, optimizer, views, geoms, teacher_temp=teacher_temp,
                                        momentum=momentum, generator=gen, grad_clip=o.grad_clip,
                                        bf16=t.precision == "bfloat16", world=world)
            if not ok:
                bad = [n for n, v in values.items() if not math.isfinite(v)]
                warnings.warn(f"pretrain: loss {', '.join(bad)} is not finite at step {step}; stopping. "
                              f"The last good checkpoint is {latest_checkpoint(ckpt_dir)}", RuntimeWarning, stacklevel=2)
                status = "nan"
                break
            scheduler.step()
            rate = t.batch_size / (time.perf_counter() - t0)
            record = {"step": step, **values, "lr": optimizer.param_groups[-1]["lr"],
                      "teacher_momentum": momentum, "samples_per_s": rate}
            losses.append(record)
            if metrics is not None and step % t.log_every == 0:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            progress.update(step, record["total"], rate)
            last = step + 1 == t.steps
            if (t.checkpoint_every and (step + 1) % t.checkpoint_every == 0) or last:
                save_checkpoint(ckpt_dir, step + 1, student, teacher, optimizer, scheduler,
                                extra={"config": cfg.to_dict()}, keep=t.keep_checkpoints)
        else:
            step = t.steps
    finally:
        batches.close()          # stops DataLoader workers
        progress.close()
        if metrics is not None:
            metrics.close()
    weights = None
    if status == "done" and step == t.steps:
        weights = export_weights(student, teacher, cfg, os.path.join(out_dir, f"{cfg.model.name}.safetensors"))
        if rank == 0:
            log(f"wrote {weights}: the teacher's backbone with the prototype bank, for `skysense-fast embed --weights`")
    return {"status": status, "step": step, "losses": losses, "weights": weights}


def export_weights(student: SkySensePretrainer, teacher: SkySensePretrainer, cfg: PretrainConfig, path: str) -> str:
    """The trained model as a ``save_weights`` file (collective under FSDP2; rank 0 writes).

    The EMA teacher's backbone is exported (DINO's choice: it is the better encoder), with the
    student's geo-context prototype bank (the teacher keeps none)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..weights import save_weights

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0 only
    t_sd = get_model_state_dict(teacher, options=full)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        bank = student.backbone.geo.prototypes.detach().cpu()   # a buffer: FSDP2 keeps it whole on every rank
        with torch.device("meta"):
            model = models.create(cfg.model.name, **cfg.model.overrides)
        state = {k[len("backbone."):]: v for k, v in t_sd.items() if k.startswith("backbone.")}
        state["geo.prototypes"] = bank
        model.load_state_dict(state, strict=True, assign=True)
        save_weights(model, path)
    if dist.is_initialized():
        dist.barrier()
    return path
