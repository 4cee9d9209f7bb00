"""The package's own weights: safetensors files with the config and the input statistics
(:class:`~skysense_fast.data.normalisation.Normalisation`) in their metadata, written
atomically (a temporary file, then a rename: an interrupted save never leaves a partial file)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import TYPE_CHECKING, Protocol, cast

from safetensors.torch import load_file, save_file
from torch import nn

from .. import atomic
from ..data.normalisation import Normalisation
from ..data.normalisation import of as normalisation_of
from ..errors import InputError
from .checks import check_tensor, file_format

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class _Normalised(Protocol):
    """A model carrying its input statistics (a plain attribute, or TaskModel's property)."""

    normalisation: Normalisation


def _config_json(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return "{}"
    # is_dataclass also admits a dataclass type; a model's config is an instance
    d = {k: v for k, v in dataclasses.asdict(cast("DataclassInstance", cfg)).items() if k != "extra"}
    return json.dumps(d, sort_keys=True)


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """The model's state, config and input statistics as safetensors (``metadata``: more
    string entries, e.g. a task's classes), atomically."""
    path = os.fspath(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "skysense_config": _config_json(model),
            "skysense_normalisation": normalisation_of(model).to_json(), **(metadata or {})}
    with atomic.replacing(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True):
    """Load a file written by :func:`save_weights`; a file of another config is a ValueError.

    ``hr_stages`` may differ (it selects outputs, not weights): the output norms of HR stages
    the file does not return are left at init (listed in the result's ``missing_keys``), and
    those the model does not return are dropped."""
    from safetensors import safe_open

    path = os.fspath(path)
    if file_format(path) != "safetensors":
        raise InputError(f"{path} is a torch checkpoint, not a safetensors file (official .pth files: load_official)")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    saved = json.loads(meta.get("skysense_config", "{}"))
    mine = json.loads(_config_json(model))
    diff = {k: (saved.get(k), mine.get(k)) for k in set(saved) | set(mine)
            if k != "hr_stages" and saved.get(k) != mine.get(k)}
    if saved and mine and diff:
        raise InputError(f"{path} was saved for another config; differing fields (file, model): {diff}")
    state = load_file(path)
    own = model.state_dict()
    last = len(mine.get("hr_depths", ())) - 1     # the last stage's norm feeds the fusion: always loaded
    outputs = ({k for k in _output_norms(own) | _output_norms(state) if f"hr.norm{last}." not in k}
               if saved and mine and saved.get("hr_stages") != mine.get("hr_stages") else set())
    state = {k: v for k, v in state.items() if k in own or k not in outputs}
    for k, v in state.items():  # everything checked before anything is copied: all or nothing
        if k in own:
            try:
                check_tensor(k, v, own[k])
            except ValueError as e:
                raise InputError(f"{path}: {e}") from None
    missing = sorted(set(own) - set(state) - outputs)
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise InputError(f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                         " (strict=False loads what matches)")
    result = model.load_state_dict(state, strict=False) if outputs else model.load_state_dict(state, strict=strict)
    if "skysense_normalisation" in meta:  # the input statistics the weights were trained with
        cast(_Normalised, model).normalisation = Normalisation.from_json(meta["skysense_normalisation"])
    return result


def _output_norms(state) -> set[str]:
    """The keys of the HR encoder's per-stage output norms (``hr.norm<i>.*``, any prefix)."""
    return {k for k in state if re.search(r"(^|\.)hr\.norm\d+\.(weight|bias)$", k)}
