"""Per-band input statistics, carried with the weights (``save_weights`` writes them into the
safetensors metadata, ``load_weights`` puts them on the model) so a model is always fed the
way it was trained. Defaults: SKYSENSE_SPEC.md §8 (HR: ImageNet's on 0-255; S2: L2A digital
numbers; S1: dB), what the official configs use."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Normalisation:
    hr_mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    hr_std: tuple[float, ...] = (58.395, 57.12, 57.375)
    s2_mean: tuple[float, ...] = (884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65, 2368.51,
                                  1805.07)
    s2_std: tuple[float, ...] = (1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31, 1455.52,
                                 1343.48)
    s1_mean: tuple[float, ...] = (-12.548, -20.192)
    s1_std: tuple[float, ...] = (5.257, 5.912)

    def __post_init__(self):
        for kind in ("hr", "s2", "s1"):
            mean, std = getattr(self, f"{kind}_mean"), getattr(self, f"{kind}_std")
            if len(mean) != len(std) or not all(s > 0 for s in std):
                raise InputError(f"normalisation: {kind} needs as many means as stds, all stds > 0; "
                                 f"got {mean}, {std}")

    def apply(self, x: np.ndarray, kind: str) -> np.ndarray:
        """(bands, h, w) raw values -> normalised float32, for kind hr / s2 / s1."""
        mean = np.asarray(getattr(self, f"{kind}_mean"), np.float32)
        std = np.asarray(getattr(self, f"{kind}_std"), np.float32)
        if x.shape[0] != len(mean):
            raise InputError(f"normalisation: {kind} has {len(mean)} bands, the data {x.shape[0]}")
        return ((x.astype(np.float32) - mean[:, None, None]) / std[:, None, None]).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Normalisation:
        return cls(**{k: tuple(v) for k, v in json.loads(text).items()})


DEFAULT = Normalisation()


def of(model) -> Normalisation:
    """The statistics a model was trained with (the defaults when it carries none)."""
    return getattr(model, "normalisation", None) or DEFAULT
