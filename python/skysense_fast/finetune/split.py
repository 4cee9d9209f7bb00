"""Held-out validation on a spatial split: whole blocks of the scene, not random pixels.

Neighbouring pixels of aerial imagery are strongly correlated, so pixels drawn at random for
validation sit next to training pixels and flatter the score. The scene is cut into square
blocks; a seeded random share of the blocks that hold labels is held out, and training crops
are drawn only from the others (crops never straddle a held-out block)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SpatialSplit:
    block: int                       # block side in pixels
    train: tuple[tuple[int, int], ...]  # (row, col) block origins
    val: tuple[tuple[int, int], ...]

    def windows(self, which: str, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(row, col, h, w) pixel windows of the train or val blocks, cut at the scene's edge."""
        blocks = {"train": self.train, "val": self.val}[which]
        return [(r, c, min(self.block, height - r), min(self.block, width - c)) for r, c in blocks]

    def random_crop(self, height: int, width: int, crop: int, generator) -> tuple[int, int, int, int, int, int]:
        """(row, col) of a random ``crop`` inside a random training block, and that block's
        (row, col, h, w): a crop larger than a block cut by the scene's edge starts at the block."""
        import torch

        br, bc = self.train[int(torch.randint(len(self.train), (1,), generator=generator))]
        bh, bw = min(self.block, height - br), min(self.block, width - bc)
        r = br + int(torch.randint(max(1, bh - crop + 1), (1,), generator=generator))
        c = bc + int(torch.randint(max(1, bw - crop + 1), (1,), generator=generator))
        return r, c, br, bc, bh, bw


def spatial_split(labelled: np.ndarray, block: int, val_fraction: float = 0.2, seed: int = 0) -> SpatialSplit:
    """Blocks of ``block`` pixels over a (H, W) bool map of labelled pixels; blocks without a
    label are left out; ``val_fraction`` of the rest (at least one, and one at least left for
    training) are held out, chosen with ``seed``."""
    if block < 1:
        raise InputError(f"spatial_split: block must be >= 1 pixel, got {block}")
    if not 0 < val_fraction < 1:
        raise InputError(f"spatial_split: val_fraction must be in (0, 1), got {val_fraction}")
    H, W = labelled.shape
    origins = [(r, c) for r in range(0, H, block) for c in range(0, W, block)
               if labelled[r:r + block, c:c + block].any()]
    if len(origins) < 2:
        raise InputError(f"spatial_split: {len(origins)} block(s) of {block} px hold labels; need two (one to train, "
                         "one to validate): use smaller blocks or more labels")
    rng = np.random.default_rng(seed)
    n_val = min(len(origins) - 1, max(1, math.floor(val_fraction * len(origins) + 0.5)))
    pick = set(rng.choice(len(origins), size=n_val, replace=False).tolist())
    return SpatialSplit(block, tuple(o for i, o in enumerate(origins) if i not in pick),
                        tuple(o for i, o in enumerate(origins) if i in pick))
