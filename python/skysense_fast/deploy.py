"""Deployable files of a model or a fine-tuned task: ``torch.export`` programs (.pt2) and
TorchScript traces, with positional inputs and example inputs of a given size, written
atomically. The command line's ``export`` is a thin layer over these."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from . import atomic
from .errors import InputError


def positional(model: nn.Module, names: tuple[str, ...], outputs: tuple[str, ...] | None = ("fused", "geo")):
    """``model`` with positional inputs ``names`` (and, for a dict output, those ``outputs`` as a
    tuple; None: its output as it is): what export and trace want."""

    class Path(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *inputs):
            out = self.m(**dict(zip(names, inputs, strict=True)))
            return out if outputs is None else tuple(out[k] for k in outputs)

    return Path(model)


def model_program(model, part: str, size: int, frames: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(module, example inputs) of a SkySense: ``hr`` (the SwinV2 encoder), ``model`` (HR ->
    fused, geo) or ``multimodal`` (HR + S2 + S1 series with dates and validity -> fused, geo)."""
    hr = torch.randn(1, model.config.hr_in_chans, size, size)
    latlon = torch.tensor([[45.0, 7.0]])
    if part == "hr":
        return model.hr, (hr,)
    if part == "model":
        return positional(model, ("hr", "latlon")), (hr, latlon)
    g, T = size // 32, frames
    names = ("hr", "s2", "s1", "doy_s2", "doy_s1", "valid_s2", "valid_s1", "latlon")
    example = (hr, torch.randn(1, T, model.config.s2_in_chans, g, g), torch.randn(1, T, model.config.s1_in_chans, g, g),
               torch.randint(1, 366, (1, T)), torch.randint(1, 366, (1, T)), torch.ones(1, T, dtype=torch.bool),
               torch.ones(1, T, dtype=torch.bool), latlon)
    return positional(model, names), example


def task_program(task, size: int, where: str, frames: int = 4) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(module, example inputs) of a task model, inputs positional in this order: ``hr`` (an
    HR task) or ``hr``, ``hr2`` (change), then per series it reads ``<kind>``, ``doy_<kind>``,
    ``valid_<kind>`` (``frames`` acquisitions on the fusion grid of a ``size`` HR tile; a
    temporal task's grid is the series' own, ``size`` / 32 cells too), then ``latlon`` where the
    task uses the geo map -> logits."""
    spec, cfg = task.spec, task.config
    if spec.kind == "detection":
        raise InputError(f"export --task: {where} is a detection task; its boxes (a list per image, NMS inside) are "
                         "not exported yet: run it with `skysense-fast predict`")
    hr = torch.randn(1, cfg.hr_in_chans, size, size)
    if spec.kind == "change":
        return positional(task, ("hr", "hr2"), None), (hr, torch.randn_like(hr))
    names: list[str] = ["hr"] if "hr" in spec.inputs else []
    example: list[torch.Tensor] = [hr] if names else []
    g = size // 32
    for kind in ("s2", "s1"):
        if kind in spec.inputs:
            bands = cfg.s2_in_chans if kind == "s2" else cfg.s1_in_chans
            names += [kind, f"doy_{kind}", f"valid_{kind}"]
            example += [torch.randn(1, frames, bands, g, g), torch.randint(1, 366, (1, frames)),
                        torch.ones(1, frames, dtype=torch.bool)]
    if task.needs_latlon:
        names.append("latlon")
        example.append(torch.tensor([[45.0, 7.0]]))
    return positional(task, tuple(names), None), tuple(example)


def write_program(module: nn.Module, example: tuple[torch.Tensor, ...], path: str, format: str) -> None:
    """``module`` traced on ``example`` into ``path``: ``export`` (torch.export, .pt2) or
    ``torchscript``; atomically (a failed export leaves the previous file as it was)."""
    if format not in ("export", "torchscript"):
        raise InputError(f"format must be export or torchscript, got {format!r}")
    # torch.export.save wants its archive's name to end in .pt2, the temporary one too
    with atomic.replacing(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the archive writer says "No complete tensor found in the group" for weights that
        # share storage, which matters only for weights off the CPU; they are on the CPU here
        warnings.filterwarnings("ignore", message="No complete tensor found", category=UserWarning)
        # a trace is of one input size (the caller says so); torch's notes on each shape test
        # it froze, and on TorchScript's deprecation, are not the user's to act on
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
        if format == "export":
            torch.export.save(torch.export.export(module, example), tmp)
        else:
            torch.jit.trace(module, example, check_trace=False).save(tmp)
