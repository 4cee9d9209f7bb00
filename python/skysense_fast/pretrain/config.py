"""Pretraining configuration: typed sections, read from YAML and checked field by field.

A config file has the sections ``model``, ``data``, ``loss``, ``optim`` and ``train``; each
field is optional (the defaults below), unknown fields and wrong types are errors that name
the field (``loss.student_temp``), and impossible combinations (a crop larger than the
sample, a batch that does not split over the ranks) are rejected before anything is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..config import (
    ConfigError,
    ModelSection,
    OptimSection,
    RunConfig,
    TrainSection,
    parse,
    read_yaml,
    require,
    validate_common,
)

__all__ = ["ConfigError", "DataSection", "LossSection", "ModelSection", "PretrainConfig", "PretrainOptimSection",
           "TrainSection", "from_dict", "load_config", "scene_list", "validate"]


@dataclass
class DataSection:
    kind: str = "synthetic"      # "synthetic" (generated, deterministic per index) or "scenes"
    modalities: tuple[str, ...] = ("hr", "s2", "s1")   # what is trained: any subset (scenes: with hr)
    samples: int = 4096          # dataset size (synthetic)
    hr: str | None = None        # scenes: the HR GeoTIFF (RGB, 8-bit; other dtypes need hr_scale)
    hr_scale: str | None = None  # scenes: "max=VALUE" or "percentile=LO,HI" for an HR raster that is not 8-bit
    s2: str | None = None        # scenes: Sentinel-2 series (folder of GeoTIFFs or one multi-band file)
    s1: str | None = None        # scenes: Sentinel-1 series
    stride: int = 0              # scenes: cells between sample windows (0 = grid: no overlap)
    manifest: str | None = None  # scenes: a YAML list of {hr, s2, s1, latlon} (relative paths: to the list's folder)
    latlon: tuple[float, float] | None = None   # scenes: where an HR image without a CRS lies (degrees)
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
class PretrainOptimSection(OptimSection):
    teacher_momentum: float = 0.996  # cosine schedule from here to teacher_momentum_final
    teacher_momentum_final: float = 1.0


@dataclass
class PretrainConfig(RunConfig):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: PretrainOptimSection = field(default_factory=PretrainOptimSection)
    train: TrainSection = field(default_factory=TrainSection)


def from_dict(raw: dict) -> PretrainConfig:
    cfg = parse(PretrainConfig, raw)
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> PretrainConfig:
    """Read a YAML pretraining config; ``overrides`` = {"train.steps": 5, ...} on top."""
    return from_dict(read_yaml(path, overrides))


def scene_list(manifest: str, modalities: tuple[str, ...] = ("hr", "s2", "s1")) -> list[dict]:
    """The scenes of a manifest: a YAML list of mappings with hr and the series of the trained
    ``modalities`` (paths relative to the manifest's folder unless absolute), each checked to
    exist, and optionally latlon: [lat, lon] for an HR image without a CRS."""
    import yaml

    require(os.path.exists(manifest), f"data.manifest: no such file: {manifest}")
    with open(manifest) as f:
        try:
            entries = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config: data.manifest {manifest} is not valid YAML: {e}") from None
    require(isinstance(entries, list) and entries, f"data.manifest {manifest} must be a non-empty list of scenes")
    root = os.path.dirname(os.path.abspath(manifest))
    files = tuple(m for m in ("hr", "s2", "s1") if m in modalities)
    scenes = []
    for i, entry in enumerate(entries):
        require(isinstance(entry, dict) and set(entry) - {"latlon"} == set(files),
                f"data.manifest {manifest}: scene {i} must have exactly {', '.join(files)} (and optionally latlon) "
                f"for data.modalities {list(modalities)}, got {entry!r}")
        paths: dict = {k: os.path.join(root, str(entry[k])) for k in files}
        for k, path in paths.items():
            require(os.path.exists(path), f"data.manifest {manifest}: scene {i} {k}: no such file or folder: {path}")
        if "latlon" in entry:
            ll = entry["latlon"]
            require(isinstance(ll, list) and len(ll) == 2 and all(isinstance(v, (int, float)) for v in ll)
                    and -90 <= ll[0] <= 90 and -180 <= ll[1] <= 180,
                    f"data.manifest {manifest}: scene {i} latlon must be [lat, lon] in degrees, got {ll!r}")
            paths["latlon"] = (float(ll[0]), float(ll[1]))
        scenes.append(paths)
    return scenes


def validate(cfg: PretrainConfig, world_size: int = 1) -> None:
    """Cross-field checks: sizes that cannot work, values out of range."""
    d, lo, o = cfg.data, cfg.loss, cfg.optim
    validate_common(cfg.model, cfg.optim, cfg.train, world_size)
    require(d.kind in ("synthetic", "scenes"), f"data.kind must be 'synthetic' or 'scenes', got {d.kind!r}")
    mods = d.modalities
    require(len(mods) >= 1 and len(set(mods)) == len(mods) and set(mods) <= {"hr", "s2", "s1"},
            f"data.modalities must be distinct names among hr, s2, s1, got {list(mods)}")
    mods = d.modalities = tuple(m for m in ("hr", "s2", "s1") if m in mods)   # one order: [s2, hr] is [hr, s2]
    if d.kind == "scenes":
        require("hr" in mods, "data.modalities: pretraining on scenes needs hr (the windows are cut from the HR "
                              f"image); got {list(mods)}")
        if d.manifest is not None:
            require(all(getattr(d, n) is None for n in ("hr", "s2", "s1")),
                    "data.manifest and data.hr/s2/s1 exclude each other: list every scene in the manifest")
            scene_list(d.manifest, mods)
        else:
            for name in ("hr", "s2", "s1"):
                path = getattr(d, name)
                if name in mods:
                    require(path is not None, f"data.{name} is required with data.kind 'scenes' and "
                                               f"data.modalities {list(mods)} (or data.manifest listing scenes)")
                    require(os.path.exists(path), f"data.{name}: no such file or folder: {path}")
                else:
                    require(path is None, f"data.{name} is given but data.modalities {list(mods)} does not train it")
    if d.latlon is not None:
        require(-90 <= d.latlon[0] <= 90 and -180 <= d.latlon[1] <= 180,
                f"data.latlon must be (lat, lon) in degrees, got {d.latlon}")
    require(d.stride >= 0, f"data.stride must be >= 0, got {d.stride}")
    for name in ("samples", "grid", "crop", "s2_frames", "s1_frames", "min_frames", "classes"):
        require(getattr(d, name) >= 1, f"data.{name} must be >= 1, got {getattr(d, name)}")
    require(d.crop <= d.grid, f"data.crop ({d.crop}) must be <= data.grid ({d.grid}): a view is a crop of the sample")
    require(d.local_crops >= 0, f"data.local_crops must be >= 0, got {d.local_crops}")
    require(1 <= d.local_crop <= d.crop, f"data.local_crop ({d.local_crop}) must be in [1, data.crop = {d.crop}]")
    series = [getattr(d, f"{m}_frames") for m in ("s2", "s1") if m in mods]
    require(not series or d.min_frames <= min(series),
            f"data.min_frames ({d.min_frames}) must be <= data.s2_frames and data.s1_frames of the trained series")
    for name in ("out_dim", "head_hidden", "head_bottleneck", "object_grid", "sinkhorn_iters", "cma_dim"):
        require(getattr(lo, name) >= 1, f"loss.{name} must be >= 1, got {getattr(lo, name)}")
    require(lo.centering in ("ema", "sinkhorn"), f"loss.centering must be ema or sinkhorn, got {lo.centering!r}")
    require(lo.pixel_samples >= 0, f"loss.pixel_samples must be >= 0 (0 = all), got {lo.pixel_samples}")
    require(lo.object_grid <= d.crop, f"loss.object_grid ({lo.object_grid}) must be <= data.crop ({d.crop})")
    require(lo.cma_max_pixels >= 2, "loss.cma_max_pixels must be >= 2 (InfoNCE needs negatives), got "
                                    f"{lo.cma_max_pixels}")
    for name in ("student_temp", "teacher_temp", "teacher_temp_warmup_from", "object_epsilon", "cma_temp",
                 "geo_epsilon"):
        require(getattr(lo, name) > 0, f"loss.{name} must be > 0, got {getattr(lo, name)}")
    for name in ("pixel_weight", "object_weight", "image_weight", "fused_weight", "cma_weight"):
        require(getattr(lo, name) >= 0, f"loss.{name} must be >= 0, got {getattr(lo, name)}")
    for name in ("center_momentum", "geo_momentum"):
        require(0 <= getattr(lo, name) <= 1, f"loss.{name} must be in [0, 1], got {getattr(lo, name)}")
    require(0 <= o.teacher_momentum <= o.teacher_momentum_final <= 1,
            f"optim.teacher_momentum ({o.teacher_momentum}) <= optim.teacher_momentum_final "
            f"({o.teacher_momentum_final}) must hold, both in [0, 1]")
