"""Typed run configs (pretraining, fine-tuning): dataclass sections read from YAML and checked
field by field, and the sections both kinds of run share.

A config is a dataclass of section dataclasses. Every field is optional (its default), unknown
sections and fields and wrong types are errors that name the field (``optim.lr``), and
``--set section.field=value`` overrides (values read as YAML) apply before the check. One
checker for every config: pydantic would add a dependency for what these forty lines do.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field

from .errors import InputError

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance


class ConfigError(InputError):
    """A config that cannot run; the message names the field."""


@dataclass
class ModelSection:
    name: str = "skysense-tiny"                   # a models.list_configs() name
    overrides: dict = field(default_factory=dict)  # SkySenseConfig fields to change
    weights: str | None = None                    # start from these weights (save_weights / official / save_pretrained)


@dataclass
class OptimSection:
    lr: float = 5e-4                 # peak learning rate
    min_lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.04
    layer_decay: float = 1.0         # within each encoder; 1.0 = off
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 3.0           # 0 = off


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
    num_workers: int = 0             # DataLoader worker processes preparing the next steps


class RunConfig:
    """Base of a run's config dataclass (its fields are the sections)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(typing.cast("DataclassInstance", self))   # every subclass is a dataclass


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
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            args = (args[0],) * (len(value) if isinstance(value, (list, tuple)) else 0)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"config: {name} must be a list of {len(args)} values, got {value!r}")
        return tuple(_check_type(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
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


def parse_section(cls, raw, name: str):
    """One section (a dataclass) from a mapping, type-checked; ``name`` prefixes the errors."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {name} must be a mapping of fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"config: unknown field {name}.{unknown[0]} (known fields of {name}: "
                          f"{', '.join(sorted(known))})")
    return cls(**{k: _check_type(v, hints[k], f"{name}.{k}") for k, v in raw.items()})


def parse(cls, raw: dict):
    """A ``cls`` config (a dataclass of sections) from a mapping of sections, type-checked."""
    sections = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: the file must hold a mapping with sections {', '.join(sections)}; got {raw!r}")
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(f"config: unknown section {unknown[0]!r} (sections: {', '.join(sorted(sections))})")
    hints = typing.get_type_hints(cls)
    return cls(**{k: parse_section(hints[k], raw.get(k), k) for k in sections})


def read_yaml(path: str | os.PathLike, overrides: dict | None = None) -> dict:
    """The mapping of a YAML config, with ``overrides`` = {"train.steps": 5, ...} on top."""
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
        if not section or not name:
            raise ConfigError(f"config: an override names SECTION.FIELD, got {key!r}")
        if not isinstance(raw, dict):
            break  # parse() names the problem
        raw.setdefault(section, {})
        if isinstance(raw[section], dict):
            raw[section][name] = value
    return raw


def parse_set(items: list[str]) -> dict:
    """["train.steps=5", "loss.cma_temp=0.2"] -> {"train.steps": 5, ...} (values read as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or "." not in key:
            raise InputError(f"--set takes SECTION.FIELD=VALUE (e.g. train.steps=100), got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(f"--set {item}: the value is not valid YAML ({e})") from None
    return out


def require(ok: object, msg: str) -> None:   # ok: any value, tested for truth
    if not ok:
        raise ConfigError(f"config: {msg}")


def validate_common(model: ModelSection, optim: OptimSection, train: TrainSection, world_size: int = 1) -> None:
    """Checks of the shared sections: the model exists, rates and schedules in range, the batch
    splits over the ranks."""
    from .models import get_config, list_configs

    m, o, t = model, optim, train
    require(m.name in list_configs(), f"model.name {m.name!r} is not a config ({', '.join(list_configs())})")
    try:
        get_config(m.name, **m.overrides)
    except TypeError as e:
        raise ConfigError(f"config: model.overrides: {e}") from None
    if m.weights is not None and "=" not in m.weights:
        from .weights.folders import looks_like_repo_id

        require(os.path.exists(m.weights) or looks_like_repo_id(m.weights),
                f"model.weights: no such file, folder or hub id owner/name: {m.weights}")
    require(o.lr > 0 and o.min_lr >= 0, f"optim.lr must be > 0 and optim.min_lr >= 0, got {o.lr}, {o.min_lr}")
    require(0 < o.layer_decay <= 1, f"optim.layer_decay must be in (0, 1], got {o.layer_decay}")
    require(all(0 <= b < 1 for b in o.betas), f"optim.betas must be in [0, 1), got {o.betas}")
    require(o.weight_decay >= 0 and o.grad_clip >= 0 and o.warmup_steps >= 0,
            "optim.weight_decay, optim.grad_clip, optim.warmup_steps must be >= 0")
    require(t.steps >= 1, f"train.steps must be >= 1, got {t.steps}")
    require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    require(t.batch_size % world_size == 0,
            f"train.batch_size ({t.batch_size}) must split evenly over the {world_size} ranks")
    require(t.precision in ("float32", "bfloat16"), f"train.precision must be float32 or bfloat16, got {t.precision!r}")
    require(t.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {t.device!r}")
    require(t.num_workers >= 0, f"train.num_workers must be >= 0, got {t.num_workers}")
    require(t.checkpoint_every >= 0 and t.log_every >= 1 and t.keep_checkpoints >= 1,
            "train.checkpoint_every must be >= 0, train.log_every and train.keep_checkpoints >= 1")
