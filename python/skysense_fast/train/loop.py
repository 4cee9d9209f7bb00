"""The training loop that pretraining and fine-tuning share.

What a run trains is a :class:`Trainee`: its modules (checkpointed by name, the first is the one
the optimiser trains), the optimiser and schedule, the batches of each step and the loss parts
of a batch. The loop owns everything else, the same for both: bf16 autocast, gradient clipping,
a step skipped (and the run stopped) when a loss is not finite on any rank, ``metrics.jsonl``
(trimmed on resume so that no step is logged twice), atomic checkpoints every
``checkpoint_every`` steps with exact resume (falling back to the checkpoint before a damaged
one), validation every ``evaluate_every`` steps into ``metrics.json``, and a progress line.

Data parallelism: each rank's batch is its slice of the step's global batch, the loss parts are
averaged over the ranks, and FSDP2 averages gradients (``shard``), so N ranks compute what one
process does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Generator, Mapping
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import atomic, distributed
from ..backends import use_backend
from ..config import TrainSection
from ..errors import InputError
from ..progress import bar
from .checkpoint import check_resumable, complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


def device_of(name: str) -> torch.device:
    """``train.device`` -> the device of this rank (cuda:LOCAL_RANK under torchrun)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("config: train.device is cuda but no CUDA device is available")
        return torch.device("cuda", distributed.local_rank())
    return torch.device("cpu")


def shard(module: nn.Module, blocks, mesh=None, bf16_params: bool = False) -> None:
    """FSDP2 per block (``blocks``: the model's stated blocks and any heads), then the root.

    ``bf16_params``: gather parameters in bfloat16 for the forward and backward (the shards,
    the optimiser and any EMA stay float32; gradients are reduced in float32): half the
    all-gather traffic and no per-op weight casts under autocast.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {"mesh": mesh}
    if bf16_params:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for m in blocks:
        fully_shard(m, **kw)
    fully_shard(module, **kw)


def _all_mean(values: Tensor, world: int) -> Tensor:
    if world > 1:
        dist.all_reduce(values)
        values /= world
    return values


def optimiser_step(model: nn.Module, optimizer: torch.optim.Optimizer, losses: Callable[[], dict[str, Tensor]], *,
                   grad_clip: float = 0.0, bf16: bool = False, world: int = 1,
                   after: Callable[[], None] | None = None) -> tuple[dict[str, float], bool]:
    """One step: ``losses()`` (a dict of loss parts with ``total``) under autocast, backward,
    clipping, the optimiser, then ``after`` (an EMA update).

    Returns (loss parts averaged over ranks, ok). When a part is not finite on any rank nothing
    is updated and ok is False (every rank agrees: the check is on reduced values).
    """
    device_type = next(model.parameters()).device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        parts = losses()
    names = sorted(parts)
    reduced = _all_mean(torch.stack([parts[n].detach().float() for n in names]), world)
    values = dict(zip(names, reduced.tolist(), strict=True))
    if not torch.isfinite(reduced).all():
        return values, False
    optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if after is not None:
        after()
    return values, True


class Trainee(Protocol):
    """What the loop trains (read-only members, so that a trainee's own narrower types fit)."""

    @property
    def modules(self) -> Mapping[str, nn.Module]:
        """Checkpointed; the first is the optimiser's."""

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler: ...

    @property
    def grad_clip(self) -> float:
        """Max gradient norm, 0 = off."""

    def batches(self, start: int) -> Generator:
        """This rank's batch of each step from ``start`` on (deterministic per step); closed
        when the run ends (which stops DataLoader workers)."""

    def losses(self, step: int, batch) -> dict[str, Tensor]:
        """The loss parts of a batch, ``total`` among them."""

    def after_step(self, step: int) -> dict[str, float]:
        """Work after the optimiser (an EMA); extra fields for the step's metrics line."""

    def evaluate(self, step: int) -> dict | None:
        """Validation metrics (plain JSON values), or None where a run has none."""


def resume_from(ckpt_dir: str, config: dict, shape_fields: dict, trainee: Trainee, rank: int = 0,
                defaults: dict | None = None) -> tuple[int, str]:
    """(step, path) from the newest checkpoint that loads; one that does not (a damaged file)
    is reported and the one before it tried, down to the oldest kept."""
    newest = latest_checkpoint(ckpt_dir)
    assert newest is not None   # run() resumes only where there is one
    candidates = [newest] + [p for p in reversed(complete_checkpoints(ckpt_dir)) if p != newest]
    errors = []
    for path in candidates:
        try:
            try:
                check_resumable(path, config, shape_fields, defaults)  # another model: an error, never a fall-back
            except json.JSONDecodeError as e:
                raise RuntimeError(f"damaged trainer state ({e})") from None
            return load_checkpoint(path, trainee.modules, trainee.optimizer, trainee.scheduler)["step"], path
        except (RuntimeError, OSError) as e:
            errors.append(f"{path}: {' '.join(str(e).split())[:300]}")
            if rank == 0:
                logger.warning("cannot resume from %s; trying the checkpoint before it", errors[-1])
    raise RuntimeError("no checkpoint in " + ckpt_dir + " loads:\n  " + "\n  ".join(errors)
                       + "\n(use --no-resume, or another train.out_dir, to start over)")


def trim_metrics(path: str, start: int) -> None:
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
        write_json_atomic(path, None, text="".join(keep))


def write_json_atomic(path: str, data, text: str | None = None) -> None:
    atomic.write_text(path, json.dumps(data, indent=1) if text is None else text)


def run(trainee: Trainee, train: TrainSection, *, config: dict, shape_fields: dict, rank: int, world: int,
        config_defaults: dict | None = None,
        resume: bool = True, stop_after: int | None = None, evaluate_every: int = 0,
        what: str = "train") -> dict:
    """Run (or continue) ``train.steps`` steps of ``trainee``.

    Writes ``<out_dir>/config.json``, ``metrics.jsonl`` (one line per logged step: every loss
    part, lr, the trainee's extras, samples/s; validation lines carry ``val``), ``metrics.json``
    (the latest validation) and checkpoints under ``<out_dir>/checkpoints``. With ``resume`` it
    continues from the latest complete checkpoint there (``shape_fields`` of ``config`` must
    match it). ``stop_after`` ends the run after that many steps of this call, as an
    interruption would, without the final checkpoint.
    Returns {"status": "done" | "stopped" | "nan", "step", "losses", "validation"}.
    """
    t = train
    out_dir, ckpt_dir = t.out_dir, os.path.join(t.out_dir, "checkpoints")
    start = 0
    if resume and latest_checkpoint(ckpt_dir) is not None:
        start, path = resume_from(ckpt_dir, config, shape_fields, trainee, rank, config_defaults)
        if rank == 0:
            logger.info("resumed from %s at step %d", path, start)
    jsonl = os.path.join(out_dir, "metrics.jsonl")
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        write_json_atomic(os.path.join(out_dir, "config.json"), config)
        trim_metrics(jsonl, start)
    backend = contextlib.nullcontext() if t.backend == "auto" else use_backend(t.backend)
    progress = bar(t.steps - start, what, "step", t.progress and rank == 0)
    model = next(iter(trainee.modules.values()))
    losses: list[dict] = []
    validation = None
    status, step = "done", start
    metrics = open(jsonl, "a") if rank == 0 else None

    def log_line(record: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    for m in trainee.modules.values():
        m.train()
    batches = trainee.batches(start)
    try:
        for step in range(start, t.steps):
            if stop_after is not None and step - start >= stop_after:
                status = "stopped"
                break
            t0 = time.perf_counter()
            try:
                batch, error = next(batches), None
            except Exception as e:   # bad data on one rank: every rank stops, none waits in a collective
                batch, error = None, e
            distributed.agree(error, f"{what} step {step}")
            extras: dict[str, float] = {}

            def after(s: int = step, e: dict[str, float] = extras) -> None:   # (defaults bind this step's)
                e.update(trainee.after_step(s))

            with backend:  # the closures run within this iteration, binding its step and batch
                values, ok = optimiser_step(model, trainee.optimizer, functools.partial(trainee.losses, step, batch),
                                            grad_clip=trainee.grad_clip, bf16=t.precision == "bfloat16",
                                            world=world, after=after)
            if not ok:
                bad = [n for n, v in values.items() if not math.isfinite(v)]
                logger.warning("%s: loss %s is not finite at step %d; stopping. The last good checkpoint is %s",
                               what, ", ".join(bad), step, latest_checkpoint(ckpt_dir))
                status = "nan"
                break
            trainee.scheduler.step()
            rate = t.batch_size / (time.perf_counter() - t0)
            record = {"step": step, **values, "lr": trainee.optimizer.param_groups[-1]["lr"], **extras,
                      "samples_per_s": rate}
            losses.append(record)
            if step % t.log_every == 0:
                log_line(record)
            progress.update()
            progress.set_postfix(loss=f"{record['total']:.4f}", samples_s=f"{rate:.1f}", refresh=False)
            last = step + 1 == t.steps
            if (evaluate_every and (step + 1) % evaluate_every == 0) or last:
                validation = _evaluate(trainee, step + 1, out_dir, rank, log_line)
            if (t.checkpoint_every and (step + 1) % t.checkpoint_every == 0) or last:
                save_checkpoint(ckpt_dir, step + 1, trainee.modules, trainee.optimizer, trainee.scheduler,
                                extra={"config": config}, keep=t.keep_checkpoints)
        else:
            step = t.steps
    finally:
        batches.close()          # stops DataLoader workers
        progress.close()
        if metrics is not None:
            metrics.close()
    return {"status": status, "step": step, "losses": losses, "validation": validation}


def _evaluate(trainee: Trainee, step: int, out_dir: str, rank: int, log_line) -> dict | None:
    was = [(m, m.training) for m in trainee.modules.values()]
    for m, _ in was:
        m.eval()
    try:
        with torch.no_grad():
            result = trainee.evaluate(step)
    finally:
        for m, mode in was:
            m.train(mode)
    if result is None:
        return None
    if rank == 0:
        write_json_atomic(os.path.join(out_dir, "metrics.json"), {"step": step, **result})
        log_line({"step": step - 1, "val": {k: v for k, v in result.items() if isinstance(v, (int, float))}})
    return result
