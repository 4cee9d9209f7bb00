"""Pretraining configuration: typed sections, read from YAML and checked field by field.

A config file has the sections ``model``, ``data``, ``loss``, ``optim`` and ``train``; each
field is optional (the defaults below), unknown fields and wrong types are errors that name
the field (``loss.student_temp``), and impossible combinations (a crop larger than the
sample, a batch that does not split over the ranks) are rejected before anything is built.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field

from ..errors import InputError


class ConfigError(InputError):
    """A pretraining config that cannot run; the message names the field."""


@dataclass
class ModelSection:
    name: str = "skysense-tiny"                   # a models.list_configs() name
    overrides: dict = field(default_factory=dict)  # SkySenseConfig fields to change
    weights: str | None = None                    # start from these weights (save_weights / official)


@dataclass
class DataSection:
    kind: str = "synthetic"      # "synthetic" (generated, deterministic per index) or "scenes"
    samples: int = 4096          # dataset size (synthetic)
    hr: str | None = None        # scenes: the HR GeoTIFF (RGB, 8-bit; other dtypes need hr_scale)
    hr_scale: str | None = None  # scenes: "max=VALUE" or "percentile=LO,HI" for an HR raster that is not 8-bit
    s2: str | None = None        # scenes: Sentinel-2 series (folder of GeoTIFFs or one multi-band file)
    s1: str | None = None        # scenes: Sentinel-1 series
    stride: int = 0              # scenes: cells between sample windows (0 = grid: no overlap)
    manifest: str | None = None  # scenes: a YAML list of {hr, s2, s1} (relative paths: to the list's folder)
    grid: int = 6                # sample size on the fusion grid (Sentinel pixels; HR is 32x)
    crop: int = 4                # each view's crop on the fusion grid (views overlap partly)
    s2_frames: int = 4
    s1_frames: int = 4
    min_frames: int = 2          # a view keeps a random subset of at least this many acquisitions
    local_crops: int = 0         # DINO multi-crop: extra small views, seen by the student only
    local_crop: int = 2          # their crop on the fusion grid
    classes: int = 6             # synthetic land-cover classes
    seed: int = 0


@dataclass
class LossSection:
    # self-distillation heads (DINO): MLP -> bottleneck -> weight-normalised prototypes
    out_dim: int = 256
    head_hidden: int = 256
    head_bottleneck: int = 64
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    teacher_temp_warmup_from: float = 0.04     # linear warmup of the teacher temperature (DINO)
    teacher_temp_warmup_steps: int = 0
    center_momentum: float = 0.9
    centering: str = "ema"                     # ema (DINO) | sinkhorn (DINOv2: Sinkhorn-balanced targets)
    pixel_weight: float = 1.0
    object_weight: float = 1.0
    image_weight: float = 1.0
    fused_weight: float = 1.0                  # L_FGCL on the fused features
    pixel_samples: int = 0                     # pixel level: at most this many pairs per sample (0 = all)
    object_grid: int = 2                       # objects per image = object_grid ** 2 (Sinkhorn seeds)
    object_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    # cross-modal alignment (InfoNCE between modalities at the same location)
    cma_weight: float = 1.0
    cma_temp: float = 0.1
    cma_dim: int = 128
    cma_max_pixels: int = 256
    # geo-context prototype bank
    geo_epsilon: float = 0.05
    geo_momentum: float = 0.99


@dataclass
class OptimSection:
    lr: float = 5e-4                 # peak learning rate
    min_lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.04
    layer_decay: float = 1.0         # within each encoder; 1.0 = off
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 3.0           # 0 = off
    teacher_momentum: float = 0.996  # cosine schedule from here to teacher_momentum_final
    teacher_momentum_final: float = 1.0


@dataclass
class TrainSection:
    steps: int = 40
    batch_size: int = 4              # global: split over the ranks
    precision: str = "float32"       # float32 | bfloat16 (autocast)
    grad_checkpointing: bool = False
    checkpoint_every: int = 20       # steps; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    out_dir: str = "runs/pretrain"
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    backend: str = "auto"            # skysense_fast.use_backend name, or auto
    progress: bool = True
    num_workers: int = 0             # DataLoader worker processes preparing the next steps' views


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(value, tp, name: str):
    """value converted to tp (ints accepted for floats, lists for tuples), or ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, name)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config: {name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_check_type(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # .inf / .nan in YAML: a run that trains to non-finite weights
            raise ConfigError(f"config: {name} must be a finite number, got {value!r}")
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool, dict) and isinstance(value, tp):
        return value
    want = {float: "a number", int: "an integer", str: "a string", bool: "true or false", dict: "a mapping"}[tp]
    raise ConfigError(f"config: {name} must be {want}, got {value!r}")


def _section(cls, raw, name: str):
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {name} must be a mapping of fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"config: unknown field {name}.{unknown[0]} (known fields of {name}: {', '.join(sorted(known))})")
    return cls(**{k: _check_type(v, hints[k], f"{name}.{k}") for k, v in raw.items()})


def from_dict(raw: dict) -> PretrainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"config: the file must hold a mapping with sections model, data, loss, optim, train; got {raw!r}")
    sections = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"config: unknown section {unknown[0]!r} (sections: {', '.join(sections)})")
    hints = typing.get_type_hints(PretrainConfig)
    cfg = PretrainConfig(**{k: _section(hints[k], raw.get(k), k) for k in sections})
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> PretrainConfig:
    """Read a YAML pretraining config; ``overrides`` = {"train.steps": 5, ...} on top."""
    import yaml

    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config: no such file: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {e}") from None
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        if not isinstance(raw, dict):
            break
        raw.setdefault(section, {})
        if isinstance(raw[section], dict):
            raw[section][name] = value
    return from_dict(raw)


def scene_list(manifest: str) -> list[dict[str, str]]:
    """The scenes of a manifest: a YAML list of mappings with hr, s2, s1 (paths relative to
    the manifest's folder unless absolute), each checked to exist."""
    import yaml

    _require(os.path.exists(manifest), f"data.manifest: no such file: {manifest}")
    with open(manifest) as f:
        try:
            entries = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config: data.manifest {manifest} is not valid YAML: {e}") from None
    _require(isinstance(entries, list) and entries, f"data.manifest {manifest} must be a non-empty list of scenes")
    root = os.path.dirname(os.path.abspath(manifest))
    scenes = []
    for i, e in enumerate(entries):
        _require(isinstance(e, dict) and set(e) == {"hr", "s2", "s1"},
                 f"data.manifest {manifest}: scene {i} must have exactly hr, s2, s1, got {e!r}")
        paths = {k: os.path.join(root, str(v)) for k, v in e.items()}
        for k, path in paths.items():
            _require(os.path.exists(path), f"data.manifest {manifest}: scene {i} {k}: no such file or folder: {path}")
        scenes.append(paths)
    return scenes


def _require(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(f"config: {msg}")


def validate(cfg: PretrainConfig, world_size: int = 1) -> None:
    """Cross-field checks: sizes that cannot work, values out of range."""
    from ..models import get_config, list_configs

    m, d, lo, o, t = cfg.model, cfg.data, cfg.loss, cfg.optim, cfg.train
    _require(m.name in list_configs(), f"model.name {m.name!r} is not a config ({', '.join(list_configs())})")
    try:
        get_config(m.name, **m.overrides)
    except TypeError as e:
        raise ConfigError(f"config: model.overrides: {e}") from None
    _require(d.kind in ("synthetic", "scenes"), f"data.kind must be 'synthetic' or 'scenes', got {d.kind!r}")
    if d.kind == "scenes":
        if d.manifest is not None:
            _require(all(getattr(d, n) is None for n in ("hr", "s2", "s1")),
                     "data.manifest and data.hr/s2/s1 exclude each other: list every scene in the manifest")
            scene_list(d.manifest)
        else:
            for name in ("hr", "s2", "s1"):
                path = getattr(d, name)
                _require(path is not None, f"data.{name} is required with data.kind 'scenes' (every modality is "
                                           "trained), or data.manifest listing scenes")
                _require(os.path.exists(path), f"data.{name}: no such file or folder: {path}")
    _require(d.stride >= 0, f"data.stride must be >= 0, got {d.stride}")
    for name in ("samples", "grid", "crop", "s2_frames", "s1_frames", "min_frames", "classes"):
        _require(getattr(d, name) >= 1, f"data.{name} must be >= 1, got {getattr(d, name)}")
    _require(d.crop <= d.grid, f"data.crop ({d.crop}) must be <= data.grid ({d.grid}): a view is a crop of the sample")
    _require(d.local_crops >= 0, f"data.local_crops must be >= 0, got {d.local_crops}")
    _require(1 <= d.local_crop <= d.crop, f"data.local_crop ({d.local_crop}) must be in [1, data.crop = {d.crop}]")
    _require(d.min_frames <= min(d.s2_frames, d.s1_frames),
             f"data.min_frames ({d.min_frames}) must be <= data.s2_frames and data.s1_frames")
    for name in ("out_dim", "head_hidden", "head_bottleneck", "object_grid", "sinkhorn_iters", "cma_dim"):
        _require(getattr(lo, name) >= 1, f"loss.{name} must be >= 1, got {getattr(lo, name)}")
    _require(lo.centering in ("ema", "sinkhorn"), f"loss.centering must be ema or sinkhorn, got {lo.centering!r}")
    _require(lo.pixel_samples >= 0, f"loss.pixel_samples must be >= 0 (0 = all), got {lo.pixel_samples}")
    _require(lo.object_grid <= d.crop, f"loss.object_grid ({lo.object_grid}) must be <= data.crop ({d.crop})")
    _require(lo.cma_max_pixels >= 2, f"loss.cma_max_pixels must be >= 2 (InfoNCE needs negatives), got {lo.cma_max_pixels}")
    for name in ("student_temp", "teacher_temp", "teacher_temp_warmup_from", "object_epsilon", "cma_temp", "geo_epsilon"):
        _require(getattr(lo, name) > 0, f"loss.{name} must be > 0, got {getattr(lo, name)}")
    for name in ("pixel_weight", "object_weight", "image_weight", "fused_weight", "cma_weight"):
        _require(getattr(lo, name) >= 0, f"loss.{name} must be >= 0, got {getattr(lo, name)}")
    for name in ("center_momentum", "geo_momentum"):
        _require(0 <= getattr(lo, name) <= 1, f"loss.{name} must be in [0, 1], got {getattr(lo, name)}")
    _require(o.lr > 0 and o.min_lr >= 0, f"optim.lr must be > 0 and optim.min_lr >= 0, got {o.lr}, {o.min_lr}")
    _require(0 < o.layer_decay <= 1, f"optim.layer_decay must be in (0, 1], got {o.layer_decay}")
    _require(all(0 <= b < 1 for b in o.betas), f"optim.betas must be in [0, 1), got {o.betas}")
    _require(o.weight_decay >= 0 and o.grad_clip >= 0 and o.warmup_steps >= 0,
             "optim.weight_decay, optim.grad_clip, optim.warmup_steps must be >= 0")
    _require(0 <= o.teacher_momentum <= o.teacher_momentum_final <= 1,
             f"optim.teacher_momentum ({o.teacher_momentum}) <= optim.teacher_momentum_final "
             f"({o.teacher_momentum_final}) must hold, both in [0, 1]")
    _require(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require(t.batch_size % world_size == 0,
             f"train.batch_size ({t.batch_size}) must split evenly over the {world_size} ranks")
    _require(t.precision in ("float32", "bfloat16"), f"train.precision must be float32 or bfloat16, got {t.precision!r}")
    _require(t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {t.device!r}")
    _require(t.num_workers >= 0, f"train.num_workers must be >= 0, got {t.num_workers}")
    _require(t.checkpoint_every >= 0 and t.log_every >= 1 and t.keep_checkpoints >= 1,
             "train.checkpoint_every must be >= 0, train.log_every and train.keep_checkpoints >= 1")
