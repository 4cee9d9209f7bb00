"""Augmentations that keep an image and its labels aligned: the eight symmetries of the square
(flips and quarter turns, the dihedral group D4), which overhead imagery has no preferred
orientation against. Applied to every (..., H, W) tensor of a sample alike; no resampling, so
class labels stay exact."""

from __future__ import annotations

import torch
from torch import Tensor


def d4_transform(x: Tensor, k: int) -> Tensor:
    """Symmetry k in 0..7 of the last two dimensions: k % 4 quarter turns, then a horizontal
    flip when k >= 4."""
    if not 0 <= k < 8:
        raise ValueError(f"d4_transform: k must be in 0..7, got {k}")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def random_d4(*tensors: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """The same random symmetry applied to each tensor (image, labels, masks) of one sample."""
    k = int(torch.randint(0, 8, (1,), generator=generator))
    return tuple(d4_transform(t, k) for t in tensors)
