"""A task model: the SkySense backbone and a head, and its weights file.

The file is a ``save_weights`` safetensors (backbone + head tensors, the backbone config and
input statistics) whose metadata also holds the task (``skysense_task``: kind, classes with
their raster values and names, head settings, the HR scaling, a format version), so that
``predict`` rebuilds exactly what was trained and writes class maps in the labels' own values.
The metadata is JSON checked field by field; nothing in the file is executed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models
from ..config import parse_section
from ..data.labels import ClassMap
from ..data.normalisation import of as normalisation_of
from ..errors import InputError
from ..heads import FasterRCNNHead, FCNHead, LinearSegmentationHead, SceneClassifier, UPerNetHead

FORMAT_VERSION = 1
KINDS = ("segmentation", "classification", "change", "temporal", "detection")
DENSE = ("segmentation", "change", "temporal")   # a class per pixel
HR_DENSE = ("segmentation", "change")   # ... from UPerNet over the HR stages (temporal: the fused map, FCN)
HR_PYRAMID = (*HR_DENSE, "detection")   # the kinds whose head reads the four HR stage maps
SEG_STAGES = (0, 1, 2, 3)          # strides 4 / 8 / 16 / 32, the UPerNet setting
HR_BANDS = ("red", "green", "blue")


@dataclass(frozen=True)
class TaskSpec:
    """Everything besides the tensors that a task model needs to be rebuilt and used."""

    kind: str                               # one of KINDS
    class_values: tuple[int, ...]           # segmentation: label raster values; classification: 0..C-1
    class_names: tuple[str, ...]
    model_name: str = "skysense-tiny"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    mode: str = "full"
    multi_label: bool = False
    head_channels: int = 512
    extra: str = "none"
    features: str = "hr"
    dropout: float = 0.1
    hr_scale: str | None = None
    hr_scale2: str | None = None            # change: the second date's (None: hr_scale's)
    bands: tuple[str, ...] = HR_BANDS
    inputs: tuple[str, ...] = ("hr",)       # the modalities it reads: hr, + s2 / s1 series (through the fusion)
    s2_band_order: str = "model"
    format: int = FORMAT_VERSION

    @property
    def classes(self) -> ClassMap:
        return ClassMap(self.class_values, self.class_names, at_least=1 if self.kind == "detection" else 2)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> TaskSpec:
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise InputError(f"{where}: its task metadata is not JSON ({e})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
            raise InputError(f"{where}: task metadata of format {raw.get('format') if isinstance(raw, dict) else '?'}, "
                             f"this version reads format {FORMAT_VERSION}")
        spec = parse_section(cls, raw, "task metadata")
        spec.classes  # noqa: B018 - checks the classes (distinct, sorted, names matching)
        choices = {"kind": KINDS, "mode": ("full", "frozen", "linear_probe"),
                   "extra": ("none", "fused", "geo"), "features": ("hr", "fused", "geo"),
                   "s2_band_order": ("model", "official")}
        for name, allowed in choices.items():
            if getattr(spec, name) not in allowed:
                raise InputError(f"{where}: task metadata {name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(spec, name)!r}")
        if spec.kind == "change" and (spec.inputs != ("hr", "hr2") or spec.extra != "none"):
            raise InputError(f"{where}: a change task reads hr and hr2 (two dates) and no extra map, got "
                             f"inputs {spec.inputs}, extra {spec.extra!r}")
        if spec.kind == "temporal" and (not spec.inputs or not set(spec.inputs) <= {"s2", "s1"}
                                        or spec.extra != "none"):
            raise InputError(f"{where}: a temporal task reads Sentinel series (s2 and / or s1) and no extra map, "
                             f"got inputs {spec.inputs}, extra {spec.extra!r}")
        if spec.kind == "detection" and (spec.inputs != ("hr",) or spec.extra != "none"
                                         or spec.mode == "linear_probe"):
            raise InputError(f"{where}: a detection task reads hr alone, no extra map, mode full or frozen, got "
                             f"inputs {spec.inputs}, extra {spec.extra!r}, mode {spec.mode!r}")
        if spec.kind not in ("change", "temporal") and (spec.inputs[:1] != ("hr",)
                                                        or not set(spec.inputs) <= {"hr", "s2", "s1"}):
            raise InputError(f"{where}: task metadata inputs must be hr, then s2 / s1, got {spec.inputs}")
        from ..models import list_configs
        from ..models.config import SkySenseConfig

        known = {f.name for f in dataclasses.fields(SkySenseConfig)} - {"extra"}
        if spec.model_name not in list_configs() or not set(spec.model_overrides) <= known:
            raise InputError(f"{where}: task metadata names model {spec.model_name!r} with overrides "
                             f"{sorted(spec.model_overrides)}; known configs: {', '.join(list_configs())}")
        return spec


class TaskModel(nn.Module):
    """Backbone + head. ``forward(hr, latlon=None)`` -> logits: (B, C, H, W) at the image's
    resolution (segmentation) or (B, C) (classification); detection: the losses (training,
    with ``targets``) or boxes per image (eval), see :class:`~skysense_fast.heads.FasterRCNNHead`.
    In the frozen modes the backbone runs without gradients and stays in eval mode."""

    head: nn.Module               # the task's head (its call signature depends on the kind)
    load_report: str | None       # what loading the backbone's weights said (set by build_task_model)
    source_files: tuple[str, ...] = ()   # the file it was loaded from (load_task)

    def __init__(self, backbone: models.SkySense, spec: TaskSpec):
        super().__init__()
        self.backbone, self.spec = backbone, spec
        self.config = backbone.config            # what save_weights records
        C = len(spec.class_values)
        cfg = backbone.config
        extra = {"none": 0, "fused": cfg.fusion_dim, "geo": 2 * cfg.fusion_dim}
        if spec.kind == "temporal":   # the fused map of the series alone, on their grid
            self.head = (LinearSegmentationHead([cfg.fusion_dim], C) if spec.mode == "linear_probe" else
                         FCNHead(cfg.fusion_dim, C, spec.head_channels, dropout=spec.dropout))
        elif spec.kind in HR_PYRAMID:   # change: the same head over the two dates' stage maps differenced
            if tuple(cfg.hr_stages) != SEG_STAGES:
                raise InputError(f"TaskModel: {spec.kind} needs the backbone's hr_stages {SEG_STAGES}, got "
                                 f"{cfg.hr_stages}")
            widths = [f["num_chs"] for f in backbone.hr_feature_info()]
            if spec.kind == "detection":
                self.head = FasterRCNNHead(widths, C)
            elif spec.mode == "linear_probe":
                self.head = LinearSegmentationHead(widths, C, extra[spec.extra])
            else:
                self.head = UPerNetHead(widths, C, spec.head_channels, dropout=spec.dropout,
                                        extra_channels=extra[spec.extra])
        elif spec.kind == "classification":
            width = {"hr": cfg.hr_out_dim, "fused": cfg.fusion_dim, "geo": 2 * cfg.fusion_dim}[spec.features]
            self.head = SceneClassifier(width, C, spec.multi_label, spec.dropout if spec.mode == "full" else 0.0)
        else:
            raise InputError(f"TaskModel: unknown task kind {spec.kind!r}")
        self.frozen = spec.mode in ("frozen", "linear_probe")
        if self.frozen:
            self.backbone.requires_grad_(False)
        else:  # what an HR task never reaches trains not at all (no optimiser state for 600 M unused weights)
            for name in self.unused():
                getattr(self.backbone, name).requires_grad_(False)

    @property
    def normalisation(self):
        """The backbone's input statistics (what ``save_weights`` records and ``load_weights`` sets)."""
        return normalisation_of(self.backbone)

    @normalisation.setter
    def normalisation(self, value) -> None:
        self.backbone.normalisation = value

    @property
    def needs_latlon(self) -> bool:
        return "geo" in (self.spec.extra, self.spec.features)

    def unused(self) -> list[str]:
        """The backbone's submodules this task's outputs do not depend on: the Sentinel branches
        it has no series for, the date table without a dated series, the fusion unless the fused
        / geo map is read, the geo-context unless the geo map is."""
        kind = self.spec.kind
        reads = {self.spec.extra, self.spec.features if kind == "classification" else "fused" if kind == "temporal"
                 else "hr"}
        out = self.backbone.unreached(self.spec.inputs)
        if not reads & {"fused", "geo"}:
            out.append("fusion")
        if "geo" not in reads:
            out.append("geo")
        return out

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, hr: Tensor | None = None, latlon: Tensor | None = None,
                targets: list[dict[str, Tensor]] | None = None, **series: Tensor):
        """``series``: s2 / s1 with doy_* and valid_* (see :meth:`SkySense.forward`), exactly the
        modalities in ``spec.inputs``; ``targets``: a detection task's boxes in training."""
        if self.needs_latlon and latlon is None:
            raise InputError("TaskModel: this task uses the geo-context map: latlon (B, 2) is required")
        given = {k for k in ("hr", "s2", "s1", "hr2") if (hr if k == "hr" else series.get(k)) is not None}
        if given != set(self.spec.inputs):
            raise InputError(f"TaskModel: the task was trained on {', '.join(self.spec.inputs)}; got "
                             f"{', '.join(sorted(given))}")
        s = self.spec
        if s.kind == "temporal":   # (B, T, bands, h, w) series -> (B, classes, h, w) on their grid
            with torch.no_grad() if self.frozen else contextlib.nullcontext():
                out = self.backbone(**series)
            return self.head(out["fused"])
        assert hr is not None   # every other kind reads hr (checked above)
        h, w = hr.shape[-2:]
        if s.kind in HR_PYRAMID:
            # zero-padded to whole 32-pixel cells (the fusion grid), as training crops beyond a
            # scene's edge are: the stage maps then line up with the image, and the logits are cut
            # back to it (an edge tile of predict is the case)
            hr = F.pad(hr, (0, -w % 32, 0, -h % 32))
        if s.kind == "detection":   # boxes stay in the unpadded image's pixels
            with torch.no_grad() if self.frozen else contextlib.nullcontext():
                stages = self.backbone(hr=hr)["hr_stages"]
            # the head in float32 under autocast too: boxes decoded in bfloat16 fall on 2-pixel steps past 256
            with torch.autocast(hr.device.type, enabled=False):
                return self.head([x.float() for x in stages], hr.float(), [(h, w)] * hr.shape[0], targets)
        if s.kind == "change":
            return self._change(hr, F.pad(series["hr2"], (0, -w % 32, 0, -h % 32)))[..., :h, :w]
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            out = self.backbone(hr=hr, latlon=latlon if self.needs_latlon else None, **series)
        if s.kind == "classification":
            return self.head(out[s.features])
        logits = self.head(out["hr_stages"], out[s.extra] if s.extra != "none" else None)
        return F.interpolate(logits, size=hr.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]

    def _change(self, a: Tensor, b: Tensor) -> Tensor:
        """Change logits of two co-registered dates: one siamese pass of the backbone over both
        (shared weights, one batch), the stage maps differenced (|A - B|, symmetric in the dates),
        the dense head on the differences."""
        if a.shape != b.shape:
            raise InputError(f"TaskModel: the two dates differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            stages = self.backbone(hr=torch.cat([a, b]))["hr_stages"]
        n = a.shape[0]
        logits = self.head([(x[:n] - x[n:]).abs() for x in stages], None)
        return F.interpolate(logits, size=a.shape[-2:], mode="bilinear", align_corners=False)

    def loss_terms(self, logits: Tensor, target: Tensor, weight: Tensor | None = None,
                   ignore_index: int = -1) -> tuple[Tensor, Tensor]:
        """(sum of the losses, their count): cross-entropy over the labelled pixels (segmentation,
        the ignore label left out) or the chips, each weighted by its class's ``weight`` (the count
        is then the weights' sum, as ``F.cross_entropy``'s mean); binary cross-entropy per chip
        for multi-label. The mean is their ratio, also over the pixels of several ranks."""
        if self.spec.multi_label:
            per = F.binary_cross_entropy_with_logits(logits.float(), target.float(), pos_weight=weight,
                                                     reduction="none").mean(1)
            return per.sum(), torch.tensor(float(len(per)), device=per.device)
        target = target.long()
        total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
        valid = target != ignore_index
        count = valid.sum().float() if weight is None else weight[target[valid]].sum()
        return total, count

    def loss(self, logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -1) -> Tensor:
        """The mean loss of :meth:`loss_terms`; no labelled pixel gives 0, not NaN."""
        total, count = self.loss_terms(logits, target, weight, ignore_index)
        return total / count.clamp(min=1e-12)


def build_task_model(spec: TaskSpec, device: torch.device | str = "cpu", weights: str | None = None) -> TaskModel:
    """A fresh task model (backbone from ``weights`` where given, head at init)."""
    overrides = dict(spec.model_overrides)
    if spec.kind in HR_PYRAMID:
        overrides["hr_stages"] = SEG_STAGES
    with torch.device(device):
        backbone = models.create(spec.model_name, **overrides)
    report = None
    if weights:
        from ..weights.any import load_any

        report = load_any(backbone, weights)
    model = TaskModel(backbone, spec).to(device)
    model.load_report = report
    return model


def save_task(model: TaskModel, path: str | os.PathLike) -> None:
    """The task model as one safetensors file with its task metadata (atomic)."""
    from ..weights.io import save_weights

    save_weights(model, path, metadata={"skysense_task": model.spec.to_json()})


def read_task_spec(path: str | os.PathLike) -> TaskSpec:
    """The task of a task file (or of a save_pretrained folder / hub id holding one)."""
    from safetensors import safe_open

    from ..weights.checks import file_format
    from ..weights.folders import looks_like_repo_id, weights_file

    path = os.fspath(path)
    if os.path.isdir(path) or looks_like_repo_id(path):
        path = weights_file(path)   # a save_pretrained folder or a hub id
    if not os.path.exists(path):
        raise FileNotFoundError(f"task weights not found: {path}")

    if file_format(path) != "safetensors":
        raise InputError(f"{path} is not a safetensors task file (written by `skysense-fast finetune`)")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "skysense_task" not in meta:
        raise InputError(f"{path} holds backbone weights but no task (use --weights for a backbone, --task for "
                         "what `skysense-fast finetune` writes)")
    return TaskSpec.from_json(meta["skysense_task"], path)


def load_task(path: str | os.PathLike, device: torch.device | str = "cpu") -> TaskModel:
    """The task model of a file written by :func:`save_task`, in eval mode."""
    from ..weights.checks import block_count, check_shapes
    from ..weights.folders import looks_like_repo_id, weights_file
    from ..weights.io import load_weights

    if os.path.isdir(path) or looks_like_repo_id(os.fspath(path)):
        path = weights_file(path)
    spec = read_task_spec(path)
    # the shapes first, on the meta device: a crafted file cannot make us build a huge model
    try:
        cfg = models.get_config(spec.model_name, **spec.model_overrides)
    except TypeError as e:
        raise InputError(f"{path}: its task metadata has model_overrides this model has not ({e})") from None
    check_shapes(os.fspath(path), lambda: build_task_model(spec, "meta"), "the task it describes", block_count(cfg))
    model = build_task_model(spec, "cpu")   # built, not left empty: some buffers are not in the file
    load_weights(model, path, strict=True)
    model.source_files = (os.fspath(path),)   # what predict must never overwrite
    return model.to(device).eval()
