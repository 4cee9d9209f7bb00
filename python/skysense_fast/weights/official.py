"""Loading the officially released SkySense checkpoints (SKYSENSE_SPEC.md §2).

Released files: ``skysense_model_backbone_hr.pth`` (``backbone.<swin key>``, plus
``mask_token``), ``..._backbone_s2.pth`` (bare ViT keys + ``ctpe``), ``..._backbone_s1.pth``,
``..._head_s2.pth`` / ``..._head_s1.pth`` (``decoder.0.*``, maybe under ``backbone.``) and
``..._fusion.pth``; or one full checkpoint whose keys carry the branch prefixes
``backbone_gep.``, ``backbone_s2.``, ``backbone_s1.``, ``fusion.``, ``head_s2.``, ``head_s1.``.
The mapping is explicit: wrapper prefixes are stripped, buffers the model rebuilds are
dropped, ``ctpe`` goes to the date table, and everything else must match exactly.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from ..errors import InputError
from .checks import check_tensor, file_format

if TYPE_CHECKING:
    from ..nn.temporal_fusion import TemporalPositionEncoding

WRAPPERS = ("module.", "backbone.", "model.")
BRANCHES = {"backbone_gep.": "hr", "backbone_s2.": "s2", "backbone_s1.": "s1", "fusion.": "fusion",
            "head_s2.": "head_s2", "head_s1.": "head_s1"}
REBUILT = ("relative_coords_table", "relative_position_index")  # buffers the model recomputes
UNUSED = ("mask_token",)  # pretraining-only (masked HR tokens); not part of the encoders
DROPPED_HEADS = ("head",)  # other heads of a full checkpoint (head_gep, ...): pretraining only, dropped
HR_PATCH = "patch_embed.projection.weight"


@dataclass
class LoadReport:
    loaded: dict[str, int] = field(default_factory=dict)        # part -> tensors loaded
    missing: list[str] = field(default_factory=list)            # model keys the files lack
    unexpected: list[str] = field(default_factory=list)         # file keys the model lacks
    ignored: list[str] = field(default_factory=list)            # dropped on purpose (see REBUILT, UNUSED)
    converted: list[str] = field(default_factory=list)          # adapted on load (RGB -> RGBNIR)
    at_init: list[str] = field(default_factory=list)            # model keys no released file holds

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in self.loaded.items())
        lines = [f"loaded {sum(self.loaded.values())} tensors: " + parts]
        for name in ("missing", "unexpected", "ignored", "converted", "at_init"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name} ({len(keys)}): " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else ""))
        return "\n".join(lines)


def read_checkpoint(source: str | os.PathLike | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A state dict from a path (``torch.load`` of tensors only) or a mapping; unwraps
    ``{"model": ...}`` / ``{"state_dict": ...}``."""
    if isinstance(source, Mapping):
        sd = dict(source)
    else:
        if file_format(source) == "safetensors":
            from safetensors.torch import load_file

            sd = load_file(os.fspath(source))
        else:
            try:
                sd = torch.load(source, map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # a damaged or non-tensor file
                raise InputError(f"{source} is not a readable weights-only torch checkpoint: "
                                 f"{str(e).splitlines()[0]}") from None
        if not isinstance(sd, Mapping):
            raise InputError(f"{source} holds a {type(sd).__name__}, not a state dict")
    for key in ("model", "state_dict"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = dict(sd[key])
    return sd


def _own_prefix(part: str, key: str) -> str:
    """A split file's key without the part's own full-checkpoint prefix (``fusion.``,
    ``head_s2.``, ...), which some files keep."""
    prefix = next(p for p, name in BRANCHES.items() if name == part)
    return _strip(key[len(prefix):]) if key.startswith(prefix) else key


def _rgb_to_rgbnir(weight: Tensor, target: Tensor | None, report: LoadReport) -> Tensor:
    """An RGB patch embedding for a 4-band (RGB + NIR) model: the official converter's rule,
    the R kernel copied into the NIR slot."""
    if target is None or weight.dim() != 4 or weight.shape[1] != 3 or target.shape[1] != 4:
        return weight
    report.converted.append(f"hr.{HR_PATCH}: RGB kernel -> RGBNIR (R copied to NIR)")
    return torch.cat([weight, weight[:, :1]], 1)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in WRAPPERS:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def encoder_state(state_dict: Mapping[str, Tensor], own: Mapping[str, Tensor], branch: str) -> dict[str, Tensor]:
    """One encoder's tensors, for a bare encoder (the timm and TerraTorch backbones) whose own
    state is ``own``: from an official backbone file (``backbone.*`` keys), this package's
    weights of a whole model (``<branch>.*``: hr, s2, s1) or the encoder's own state. Wrappers
    are stripped, buffers the model rebuilds and pretraining-only tensors dropped, an RGB
    patch kernel widened for an RGB + NIR encoder; keys the file lacks are left out."""
    sd = read_checkpoint(state_dict)
    prefix = branch + "."
    if any(k.startswith(prefix) for k in sd):   # a whole SkySense model's weights
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out = {}
    for key, value in sd.items():
        key = _strip(key)
        if key.split(".")[-1] in REBUILT or key in UNUSED or key == "ctpe":
            continue
        out[key] = value
    if HR_PATCH in out and branch == "hr":
        target = own.get(HR_PATCH)
        w = out[HR_PATCH]
        if target is not None and w.dim() == 4 and w.shape[1] == 3 and target.shape[1] == 4:
            out[HR_PATCH] = torch.cat([w, w[:, :1]], 1)   # the official converter's rule (R copied to NIR)
    return out


def split_full_checkpoint(sd: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """A full checkpoint's keys per part, by branch prefix; keys without one (``ctpe``) go to
    ``"ctpe"`` as the official converter keeps them."""
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        part = next((name for p, name in BRANCHES.items() if k.startswith(p)), None)
        if part is None and k.startswith(DROPPED_HEADS):  # the converter drops them too
            parts.setdefault("dropped", {})[k] = value
        elif part is None:
            parts.setdefault("extra", {})[_strip(k)] = value
        else:
            parts.setdefault(part, {})[_strip(k[len(next(p for p in BRANCHES if k.startswith(p))):])] = value
    return parts


def load_official(model: nn.Module, source, strict: bool = True) -> LoadReport:
    """Load official weights into a :class:`~skysense_fast.models.SkySense`.

    ``source``: one full checkpoint (path or state dict), or a dict part -> file with parts
    ``hr``, ``s2``, ``s1``, ``head_s2``, ``head_s1``, ``fusion``. Parts not given are left as
    they are. Strict: a key the model lacks, a model key a given part lacks, or a shape that
    differs (a checkpoint for another config) raises ValueError naming it. The HR output norms
    of earlier stages (``config.hr_stages``), which no released file holds, are left at init
    and listed in ``report.at_init``.
    """
    if isinstance(source, Mapping) and set(source) <= set(BRANCHES.values()):
        parts = {part: {_own_prefix(part, _strip(k)): v for k, v in read_checkpoint(src).items()}
                 for part, src in source.items()}
    else:
        parts = split_full_checkpoint(read_checkpoint(source))
    report = LoadReport()
    copies: list[tuple[Tensor, Tensor, str]] = []   # (model tensor, file value, name)
    for part, sd in parts.items():
        if "ctpe" in sd:  # shipped in the S2 file (and kept by the converter in every file)
            copies.append((cast("TemporalPositionEncoding", model.ctpe).ctpe, sd.pop("ctpe"), "ctpe"))
            report.loaded["ctpe"] = 1
        for key in [k for k in sd if k.split(".")[-1] in REBUILT or k in UNUSED]:
            report.ignored.append(f"{part}.{key}")
            del sd[key]
        if part == "dropped":
            report.ignored += [f"{k} (a pretraining head)" for k in sd]
            continue
        if part == "extra":
            report.unexpected += [f"{k}" for k in sd]
            continue
        if part == "hr" and HR_PATCH in sd:
            sd[HR_PATCH] = _rgb_to_rgbnir(sd[HR_PATCH], getattr(model, part).state_dict().get(HR_PATCH), report)
        target: nn.Module = getattr(model, part)
        own = target.state_dict()
        report.unexpected += [f"{part}.{k}" for k in sd if k not in own]
        left_at_init = getattr(target, "left_at_init", None)   # SwinV2Encoder's
        at_init = set(left_at_init()) if left_at_init is not None else set()
        report.missing += [f"{part}.{k}" for k in own if k not in sd and k not in at_init]
        report.at_init += [f"{part}.{k}" for k in own if k not in sd and k in at_init]
        copies += [(own[key], value, f"{part}.{key}") for key, value in sd.items() if key in own]
        report.loaded[part] = sum(k in own for k in sd)
    if strict and (report.missing or report.unexpected):
        raise InputError("official checkpoint does not match the model (use strict=False to load what matches):\n"
                         + str(report))
    for dst, src, name in copies:  # everything checked before anything is copied: all or nothing
        check_tensor(name, src, dst)
    with torch.no_grad():
        for dst, src, _ in copies:
            dst.copy_(src)
    return report
