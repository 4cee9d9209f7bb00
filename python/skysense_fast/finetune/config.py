"""Fine-tuning configuration, on the same typed schema as pretraining (:mod:`skysense_fast.config`).

Sections: ``model`` (the backbone and its weights), ``task`` (what is learnt and how), ``data``
(the user's scene and labels, or chips), ``optim`` and ``train`` (shared with pretraining).
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

MODES = ("full", "frozen", "linear_probe")   # fine-tune everything / train the head on a frozen backbone / linear head


from .task import DENSE, KINDS  # noqa: E402 - the kinds a task file can hold


@dataclass
class TaskSection:
    kind: str = "segmentation"   # segmentation | classification | change (two dates) | temporal (series alone)
    #                              | detection (boxes: Faster R-CNN + FPN)
    name: str = "task"                      # the weights file: <out_dir>/<name>.safetensors
    mode: str = "full"                      # full | frozen | linear_probe
    classes: tuple[int, ...] | None = None  # segmentation: the label raster's class values (default: all it holds);
    #                                         detection: the boxes' class values or COCO category ids
    class_names: tuple[str, ...] | None = None
    multi_label: bool = False               # classification: several labels per chip (BigEarthNet)
    class_weights: str = "none"             # none | balanced (inverse class frequency of the training labels)
    head_channels: int = 512                # UPerNet width (the official recipe's 512)
    extra: str = "none"                     # segmentation: join the fused or geo map at stride 32 (none | fused | geo)
    features: str = "hr"                    # classification: the pooled map (hr | fused | geo)
    dropout: float = 0.1


@dataclass
class FinetuneDataSection:
    image: str | None = None         # segmentation: the HR GeoTIFF (RGB); change: the first date
    image2: str | None = None        # change: the second date (any CRS / resolution: put onto image's grid)
    hr_scale2: str | None = None     # change: the second date's scaling, when its dtype differs (default: hr_scale)
    labels: str | None = None        # segmentation: a class raster (any CRS) or a vector layer
    label_field: str = "class"       # vector labels: the integer class attribute
    hr_scale: str | None = None      # "max=VALUE" or "percentile=LO,HI" for an image that is not 8-bit
    s2: str | None = None            # segmentation: a Sentinel-2 series over the image (a folder of GeoTIFFs
    s1: str | None = None            #   or one multi-band file, as `embed --s2` reads it); Sentinel-1 likewise
    s2_dates: tuple[str, ...] | None = None   # explicit dates, one per file / acquisition
    s1_dates: tuple[str, ...] | None = None
    s2_band_order: str = "model"     # model | official (B8 stored fourth, as the official files)
    chips: str | None = None         # classification: a folder per class or a CSV of file,label; detection: a COCO JSON
    val_chips: str | None = None     # held-out chips (default: val_fraction of chips)
    chip_dir: str | None = None      # detection: the folder of data.chips' images (default: the JSON's folder)
    val_chip_dir: str | None = None  # ... and of data.val_chips' (default: that JSON's folder)
    crop: int = 256                  # segmentation: training crop in pixels (multiple of 32)
    block: int = 512                 # segmentation: spatial-split block in pixels
    val_fraction: float = 0.2
    augment: bool = True             # the eight flips / quarter turns, image and labels alike
    seed: int = 0


@dataclass
class FinetuneTrainSection(TrainSection):
    out_dir: str = "runs/finetune"
    evaluate_every: int = 0          # steps between validations (0: at the end only)


@dataclass
class FinetuneConfig(RunConfig):
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    data: FinetuneDataSection = field(default_factory=FinetuneDataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: FinetuneTrainSection = field(default_factory=FinetuneTrainSection)


# config fields that fix the shapes of a fine-tuning checkpoint
SHAPE_FIELDS = {"model": ("name", "overrides"),
                "task": ("kind", "mode", "classes", "multi_label", "head_channels", "extra", "features")}


def from_dict(raw: dict) -> FinetuneConfig:
    cfg = parse(FinetuneConfig, raw)
    validate(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> FinetuneConfig:
    """Read a YAML fine-tuning config; ``overrides`` = {"train.steps": 5, ...} on top. Relative
    data paths are taken from the config's folder when they do not exist from here."""
    cfg = from_dict(_relative_to(read_yaml(path, overrides), os.path.dirname(os.path.abspath(path))))
    return cfg


def _relative_to(raw, root: str):
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict):
        for k in ("image", "image2", "labels", "chips", "val_chips", "chip_dir", "val_chip_dir", "s2", "s1"):
            v = data.get(k)
            if isinstance(v, str) and not os.path.isabs(v) and not os.path.exists(v) and \
                    os.path.exists(os.path.join(root, v)):
                data[k] = os.path.join(root, v)
    return raw


def validate(cfg: FinetuneConfig, world_size: int = 1) -> None:
    """Cross-field checks, before anything is built: the data a task needs exists, sizes work."""
    validate_common(cfg.model, cfg.optim, cfg.train, world_size)
    t, d = cfg.task, cfg.data
    require(t.kind in KINDS, f"task.kind must be one of {', '.join(KINDS)}, got {t.kind!r}")
    require(t.mode in MODES, f"task.mode must be one of {', '.join(MODES)}, got {t.mode!r}")
    require(t.class_weights in ("none", "balanced"), "task.class_weights must be none or balanced, got "
                                                     f"{t.class_weights!r}")
    require(t.head_channels >= 1, f"task.head_channels must be >= 1, got {t.head_channels}")
    require(0 <= t.dropout < 1, f"task.dropout must be in [0, 1), got {t.dropout}")
    require(t.name and os.path.basename(t.name) == t.name and t.name not in (".", ".."),
            f"task.name must be a plain file name (no folders), got {t.name!r}")
    if t.classes is not None:
        least = 1 if t.kind == "detection" else 2
        require(len(set(t.classes)) == len(t.classes) >= least, f"task.classes must be >= {least} distinct values, "
                                                                f"got {t.classes}")
    require(t.kind in ("detection", "classification") or (d.chip_dir is None and d.val_chip_dir is None),
            "data.chip_dir / data.val_chip_dir are the image folders of a detection task's COCO chips")
    if t.class_names is not None and t.classes is not None:
        require(len(t.class_names) == len(t.classes),
                f"task.class_names has {len(t.class_names)} names for {len(t.classes)} task.classes")
    if t.kind == "detection":
        _validate_detection(cfg)
    elif t.kind == "temporal":   # Sentinel series alone, on the label raster's grid
        require(t.extra == "none", "task.extra: a temporal task reads the fused map of its series (no extra map)")
        require(not t.multi_label, "task.multi_label is for classification")
        require(d.labels is not None and os.path.exists(d.labels),
                f"data.labels is required for a temporal task (a class raster on the Sentinel grid): {d.labels}")
        require(d.s2 is not None or d.s1 is not None, "data.s2 and / or data.s1 are required for a temporal task")
        for name in ("s2", "s1"):
            path = getattr(d, name)
            require(path is None or os.path.exists(path), f"data.{name}: no such file or folder: {path}")
            require(path is not None or getattr(d, f"{name}_dates") is None, f"data.{name}_dates without data.{name}")
        require(d.image is None and d.image2 is None and d.hr_scale2 is None and d.chips is None,
                "a temporal task reads data.labels and the series: no data.image, data.image2, data.hr_scale2 or "
                "data.chips")
        require(d.crop >= 8, f"data.crop must be >= 8 label pixels, got {d.crop}")
        require(d.block >= d.crop, f"data.block ({d.block}) must be >= data.crop ({d.crop}): crops lie inside blocks")
        if t.mode != "linear_probe":
            require(cfg.train.batch_size // world_size >= 2,
                    f"train.batch_size must be >= 2 per rank for the head's BatchNorm, got {cfg.train.batch_size}")
    elif t.kind in DENSE:
        require(t.extra in ("none", "fused", "geo"), f"task.extra must be none, fused or geo, got {t.extra!r}")
        require(not t.multi_label, "task.multi_label is for classification")
        needed = ("image", "labels") if t.kind == "segmentation" else ("image", "image2", "labels")
        for name in needed:
            path = getattr(d, name)
            require(path is not None, f"data.{name} is required for {t.kind} (" + (
                "an HR GeoTIFF and its labels)" if t.kind == "segmentation" else
                "two dates of a scene, data.image and data.image2, and their change labels)"))
            require(os.path.exists(path), f"data.{name}: no such file: {path}")
        if t.kind == "change":
            require(t.extra == "none" and d.s2 is None and d.s1 is None,
                    "a change task compares two HR dates: task.extra none, no data.s2 / data.s1")
        else:
            require(d.image2 is None and d.hr_scale2 is None,
                    "data.image2 / data.hr_scale2 are the second date of a change task (task.kind: change)")
        require(d.chips is None, "data.chips is for classification; segmentation reads data.image and data.labels")
        for name in ("s2", "s1"):
            path = getattr(d, name)
            require(path is None or os.path.exists(path), f"data.{name}: no such file or folder: {path}")
            require(path is not None or getattr(d, f"{name}_dates") is None, f"data.{name}_dates without data.{name}")
        require(d.s2_band_order in ("model", "official"),
                f"data.s2_band_order must be model or official, got {d.s2_band_order!r}")
        if d.s2 or d.s1:
            require(t.extra in ("fused", "geo"), "data.s2 / data.s1 reach the head through the fusion: set task.extra "
                                                 "to fused (or geo)")
        require(d.crop >= 32 and d.crop % 32 == 0, f"data.crop must be a positive multiple of 32 pixels, got {d.crop}")
        require(d.block >= d.crop, f"data.block ({d.block}) must be >= data.crop ({d.crop}): crops lie inside blocks")
        if t.mode != "linear_probe":   # UPerNet's pyramid pooling at scale 1 has one value per channel and crop
            require(cfg.train.batch_size // world_size >= 2,
                    f"train.batch_size must be >= 2 per rank for UPerNet's BatchNorm, got {cfg.train.batch_size} over "
                    f"{world_size} rank(s)")
    else:
        require(t.features in ("hr", "fused", "geo"), f"task.features must be hr, fused or geo, got {t.features!r}")
        require(t.features != "geo", "task.features geo needs each chip's location, which chips do not carry: use hr "
                                     "or fused")
        require(t.extra == "none", "task.extra is for segmentation (classification pools task.features)")
        require(d.chips is not None, "data.chips is required for classification (a folder per class or a CSV)")
        for name in ("chips", "val_chips"):
            path = getattr(d, name)
            require(path is None or os.path.exists(path), f"data.{name}: no such file or folder: {path}")
        require(t.classes is None, "task.classes is for segmentation; classification takes task.class_names")
        require(d.s2 is None and d.s1 is None, "data.s2 / data.s1 are for segmentation (chips are HR images)")
        require(d.image2 is None and d.hr_scale2 is None,
                "data.image2 / data.hr_scale2 are the second date of a change task (task.kind: change)")
    require(0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    require(cfg.train.evaluate_every >= 0, f"train.evaluate_every must be >= 0, got {cfg.train.evaluate_every}")


def _validate_detection(cfg: FinetuneConfig) -> None:
    from ..data.labels import is_vector

    t, d = cfg.task, cfg.data
    require(t.mode in ("full", "frozen"), f"task.mode of a detection task must be full or frozen (a linear probe "
                                          f"gives no boxes), got {t.mode!r}")
    require(t.extra == "none" and d.s2 is None and d.s1 is None,
            "a detection task reads the HR image alone: task.extra none, no data.s2 / data.s1")
    require(t.class_weights == "none", "task.class_weights is for segmentation and classification (detection "
                                       "samples its RoIs a quarter positive)")
    require(not t.multi_label, "task.multi_label is for classification")
    require(d.image2 is None and d.hr_scale2 is None,
            "data.image2 / data.hr_scale2 are the second date of a change task (task.kind: change)")
    scene = d.image is not None or d.labels is not None
    require(scene != (d.chips is not None), "a detection task reads a scene (data.image and data.labels, a vector "
                                            "layer of boxes) or COCO chips (data.chips): one of the two")
    # fields a detection task has no use for are refused, not silently ignored
    fixed = {"task": (t, TaskSection(), ("features", "head_channels", "dropout")),
             "data": (d, FinetuneDataSection(), () if scene else ("crop", "block", "label_field", "hr_scale"))}
    for section, (given, default, names) in fixed.items():
        for name in names:
            require(getattr(given, name) == getattr(default, name),
                    f"{section}.{name} does not apply to a detection task" + (
                        " (its head is the DIOR recipe's: FPN 256, two 1024-wide FCs)" if section == "task" else
                        " on COCO chips (whole 8-bit chips, boxes from the JSON)"))
    require(scene or t.class_names is None or t.classes is not None,
            "task.class_names on COCO chips: the categories name the classes (task.classes picks category ids, and "
            "task.class_names then renames them)")
    if scene:
        for name in ("image", "labels"):
            path = getattr(d, name)
            require(path is not None, f"data.{name} is required for detection on a scene (an HR GeoTIFF and a "
                                      "vector layer of its objects)")
            require(os.path.exists(path), f"data.{name}: no such file: {path}")
        require(is_vector(d.labels or ""), f"data.labels of a detection task is a vector layer (.gpkg, .geojson, .shp, "
                                     f".fgb) whose features' bounding boxes are the objects, got {d.labels}")
        require(d.val_chips is None and d.chip_dir is None and d.val_chip_dir is None,
                "data.val_chips / chip_dir / val_chip_dir are for COCO chips (data.chips)")
        require(d.crop >= 32 and d.crop % 32 == 0, f"data.crop must be a positive multiple of 32 pixels, got {d.crop}")
        require(d.block >= d.crop, f"data.block ({d.block}) must be >= data.crop ({d.crop}): crops lie inside blocks")
    else:
        for name in ("chips", "val_chips"):
            path = getattr(d, name)
            require(path is None or os.path.isfile(path), f"data.{name}: no such COCO JSON file: {path}")
        for name in ("chip_dir", "val_chip_dir"):
            path = getattr(d, name)
            require(path is None or os.path.isdir(path), f"data.{name}: no such folder: {path}")
        require(d.val_chip_dir is None or d.val_chips is not None, "data.val_chip_dir without data.val_chips")


__all__ = ["ConfigError", "FinetuneConfig", "FinetuneDataSection", "FinetuneTrainSection", "SHAPE_FIELDS",
           "TaskSection", "from_dict", "load_config", "validate"]
