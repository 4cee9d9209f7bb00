"""One entry point for every kind of weights a user has, as the command line takes them."""

from __future__ import annotations

import os
import re

from torch import nn

from ..errors import InputError
from .checks import file_format
from .folders import looks_like_repo_id, weights_file
from .io import load_weights
from .official import BRANCHES, load_official


def load_any(model: nn.Module, sources: str | os.PathLike | list[str]) -> str:
    """Load ``sources`` into a SkySense model; returns a one-line summary.

    ``sources``: a safetensors file written by ``save_weights``; a ``save_pretrained`` folder
    or hub repository id; an official full
    checkpoint (``.pth``, or converted to safetensors); or ``part=path`` items for the split
    official files, parts
    ``hr``, ``s2``, ``s1``, ``head_s2``, ``head_s1``, ``fusion`` (parts not given keep their
    weights).
    """
    items = [os.fspath(sources)] if isinstance(sources, (str, os.PathLike)) else [os.fspath(s) for s in sources]
    if not items:
        raise InputError("weights: nothing given")
    named = [s for s in items if _is_part(s)]
    if named:
        if len(named) != len(items):
            raise InputError(f"weights: give one file, or part=path items only; got {items}")
        parts = dict(s.split("=", 1) for s in named)
        known = set(BRANCHES.values())
        bad = sorted(set(parts) - known)
        if bad:
            raise InputError(f"weights: unknown part {bad[0]!r} (parts: {', '.join(sorted(known))})")
        return str(load_official(model, parts))
    if len(items) > 1:
        raise InputError(f"weights: several files need part=path names (e.g. hr=backbone_hr.pth); got {items}")
    path = items[0]
    if not os.path.isfile(path) and (os.path.isdir(path) or looks_like_repo_id(path)):
        path = weights_file(path)   # a save_pretrained folder or a hub id: its model.safetensors
    if file_format(path) == "safetensors" and _is_ours(path):
        result = load_weights(model, path)
        at_init = result.missing_keys
        return f"loaded {path}" + (f"; left at init ({len(at_init)}): {', '.join(at_init)}" if at_init else "")
    return str(load_official(model, path))


def _is_part(item: str) -> bool:
    """`part=path` (a bare name before the first '='), unless a file of that name exists: a
    path may hold '=' too."""
    part, sep, _ = item.partition("=")
    return bool(sep) and re.fullmatch(r"\w+", part) is not None and not os.path.exists(item)


def _is_ours(path: str) -> bool:
    """A safetensors file written by save_weights (it records the model config)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return "skysense_config" in (f.metadata() or {})
