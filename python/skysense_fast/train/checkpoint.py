"""Training checkpoints that a crash cannot corrupt, for one process or an FSDP2 run.

What is saved is a set of named modules (pretraining: ``student`` and ``teacher``; fine-tuning:
``model``), the first of which the optimiser trains. Layout: ``<dir>/step_00000040/`` holds
the modules' and the optimiser's state as a
``torch.distributed.checkpoint`` (sharded: each rank writes its own shards, and a run may
resume on another number of ranks), ``trainer.json`` (scheduler, step, config, rank 0) and
``rng_rank<r>.json`` (each rank's RNG states). It is written as ``step_N.partial`` and
renamed when every rank has finished; ``<dir>/latest`` names the newest complete one and is
replaced atomically. A crash mid-write leaves a ``.partial`` directory that is ignored and
removed by the next save: the last good checkpoint stays what ``latest`` points at.

Resuming executes nothing the folder holds: JSON for the trainer state and RNG, the
distributed checkpoint read through :mod:`.checkpoint_reader` (no pickle beyond an
allow-list), and ``latest`` must name a ``step_<8 digits>`` folder inside ``<dir>``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from .. import atomic, distributed
from ..errors import InputError
from .checkpoint_reader import SafeLoadPlanner, SafeReader

TRAINER_FILE = "trainer.json"
_STEP_DIR = re.compile(r"step_\d{8}")


@contextlib.contextmanager
def _quiet():
    """DCP warns that it runs in a single process when torch.distributed is not initialised:
    that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
        yield


def _bytes(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict:
    """This process's RNG states as plain JSON data."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)   # the legacy global generator is an MT19937: its tuple form
    kind, keys, pos, has_gauss, gauss = np_state
    version, internal, gauss_next = random.getstate()
    state = {"torch": _bytes(torch.get_rng_state()),
             "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                       "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = [_bytes(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(_tensor(state["torch"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor(s) for s in state["cuda"]])


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _state(modules: Mapping[str, nn.Module], optimizer) -> dict:
    """The distributed state dicts of the modules (the first with the optimiser's state)."""
    (trained, model), *others = modules.items()
    msd, osd = get_state_dict(model, optimizer)
    return {trained: msd, **{name: get_model_state_dict(m) for name, m in others}, "optimizer": osd}


def save_checkpoint(directory: str, step: int, modules: Mapping[str, nn.Module], optimizer, scheduler,
                    extra: dict | None = None, keep: int = 2) -> str:
    """Collective under torch.distributed: every rank calls it. ``modules``: name -> module, the
    optimiser's own first. Returns the checkpoint path."""
    rank, world = distributed.rank_and_world()
    final = os.path.join(directory, f"step_{step:08d}")
    partial = final + ".partial"
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    distributed.barrier()
    state = _state(modules, optimizer)
    with _quiet():
        dcp.save(state, checkpoint_id=partial)
    atomic.write_text(os.path.join(partial, f"rng_rank{rank}.json"), json.dumps(rng_state()))
    if rank == 0:
        trainer = {"step": step, "world_size": world, "scheduler": scheduler.state_dict(), **(extra or {})}
        atomic.write_text(os.path.join(partial, TRAINER_FILE), json.dumps(trainer))
    distributed.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        atomic.write_text(os.path.join(directory, "latest"), os.path.basename(final) + "\n")
        done = sorted(d for d in os.listdir(directory) if d.startswith("step_") and not d.endswith(".partial"))
        for old in done[:-keep]:
            shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
    distributed.barrier()
    return final


def latest_checkpoint(directory: str) -> str | None:
    """The newest complete checkpoint under ``directory``, or None."""
    pointer = os.path.join(directory, "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        name = f.read(64).strip()
    if not _STEP_DIR.fullmatch(name):  # never a path: a pointer cannot lead out of the run folder
        raise RuntimeError(f"{pointer} must name a checkpoint folder step_<8 digits> in {directory}, got {name!r}; "
                           "remove the pointer to start over")
    path = os.path.join(directory, name)
    if not os.path.exists(os.path.join(path, TRAINER_FILE)):
        old = " (an older, pickled format this version does not read)" if os.path.exists(
            os.path.join(path, "trainer.pt")) else ""
        raise RuntimeError(f"checkpoint {path} named by {pointer} is incomplete (no {TRAINER_FILE}){old}; "
                           "remove the pointer to start over")
    return path


def complete_checkpoints(directory: str) -> list[str]:
    """Every complete checkpoint folder under ``directory``, oldest first."""
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, d) for d in sorted(os.listdir(directory))
            if _STEP_DIR.fullmatch(d) and os.path.exists(os.path.join(directory, d, TRAINER_FILE))]


def check_resumable(path: str, config: dict, shape_fields: dict[str, tuple[str, ...]],
                    defaults: dict | None = None) -> None:
    """A checkpoint written under another model or head sizes (``shape_fields``: the config
    fields, by section, that fix the shapes of what it holds) is refused with the fields that
    differ, instead of a shape error deep inside the loader."""
    saved = _read_json(os.path.join(path, TRAINER_FILE)).get("config")
    if not saved:
        return
    config = json.loads(json.dumps(config))   # as the checkpoint stored it: tuples read back as lists
    # a field the checkpoint's config lacks is newer than the checkpoint: it held the default
    # then (``defaults``: the config class's defaults, as JSON; without them such a field is
    # not compared)
    defaults = json.loads(json.dumps(defaults or {}))
    missing = object()

    def held(sec: str, f: str):
        return saved.get(sec, {}).get(f, defaults.get(sec, {}).get(f, missing))

    diff = [f"{sec}.{f}: checkpoint {held(sec, f)!r}, config {config[sec][f]!r}"
            for sec, fields in shape_fields.items() for f in fields
            if held(sec, f) is not missing and held(sec, f) != config[sec].get(f)]
    if diff:
        raise InputError(f"{path} was written by a run with another model: " + "; ".join(diff)
                         + " (use another train.out_dir, or --no-resume)")


def load_checkpoint(path: str, modules: Mapping[str, nn.Module], optimizer, scheduler) -> dict:
    """Restore everything in place (collective); returns the trainer state (step, config, ...)."""
    rank, world = distributed.rank_and_world()
    state = _state(modules, optimizer)
    with _quiet():
        try:
            dcp.load(state, storage_reader=SafeReader(path), planner=SafeLoadPlanner())
        except CheckpointException as e:  # a BaseException: made an ordinary error naming the cause
            reasons = "; ".join(dict.fromkeys(str(exc).splitlines()[0] for exc, _ in e.failures.values()))
            raise RuntimeError(f"cannot resume from {path}: {reasons}") from None
    (trained, model), *others = modules.items()
    set_state_dict(model, optimizer, model_state_dict=state[trained], optim_state_dict=state["optimizer"])
    for name, m in others:
        set_model_state_dict(m, state[name], options=StateDictOptions(strict=True))
    trainer = _read_json(os.path.join(path, TRAINER_FILE))
    scheduler.load_state_dict(trainer["scheduler"])
    rng = os.path.join(path, f"rng_rank{rank}.json")
    if trainer["world_size"] == world and os.path.exists(rng):
        set_rng_state(_read_json(rng))
    return trainer
