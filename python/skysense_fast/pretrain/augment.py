"""Multimodal views that stay spatially consistent, and mapping features between views.

A view of a sample (SkySense pretraining; the paper does not publish its augmentations,
SKYSENSE_SPEC.md §9, so these follow the DINO lineage adapted to co-registered sensors):

* one crop on the common (fusion) grid, the same for every modality (HR coordinates are 32x);
* one geometric transform for all modalities: a rotation by k x 90 degrees, then an
  optional horizontal flip (no arbitrary angles or scales: they would break the 32:1 grid);
* per-modality photometric changes: HR brightness/contrast/noise, per-band gains and noise
  for Sentinel-2, a dB offset and speckle-like noise for Sentinel-1;
* a random subset of the acquisitions of each series (the others marked invalid, keeping
  frame positions, so both views index frames alike), at least ``min_frames`` when the
  sample has that many valid ones.

``geometry`` (B, 4) = (top, left, k, flip) per sample lets :func:`to_canonical` undo the
transform of a feature map, and :func:`align` move one view's features onto another's grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .synthetic import HR_SCALE


def _spatial(x: Tensor, k: int, flip: bool) -> Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def to_canonical(x: Tensor, geometry: Tensor) -> Tensor:
    """Undo each sample's rotation/flip: (B, ..., c, c) in view orientation -> crop orientation."""
    out = []
    for xi, (_, _, k, flip) in zip(x, geometry.tolist(), strict=True):
        out.append(torch.rot90(xi.flip(-1) if flip else xi, -k, dims=(-2, -1)))
    return torch.stack(out)


def _subset(valid: Tensor, min_frames: int, g: torch.Generator) -> Tensor:
    idx = valid.nonzero().flatten()
    if idx.numel() <= min_frames:
        return valid.clone()
    n = int(torch.randint(min_frames, idx.numel() + 1, (), generator=g))
    keep = idx[torch.randperm(idx.numel(), generator=g)[:n]]
    out = torch.zeros_like(valid)
    out[keep] = True
    return out


def make_view(sample: dict[str, Tensor], crop: int, min_frames: int, g: torch.Generator) -> tuple[dict, Tensor]:
    """One augmented view of one sample (of any subset of the modalities) -> (view, geometry
    (4,) int64)."""
    grid = next((sample[m].shape[-1] for m in ("s2", "s1") if m in sample), None)
    if grid is None:
        grid = sample["hr"].shape[-1] // HR_SCALE
    top = int(torch.randint(0, grid - crop + 1, (), generator=g))
    left = int(torch.randint(0, grid - crop + 1, (), generator=g))
    k = int(torch.randint(0, 4, (), generator=g))
    flip = bool(torch.randint(0, 2, (), generator=g))
    s, S = slice(top, top + crop), slice(left, left + crop)
    view = {"latlon": sample["latlon"]}
    if "hr" in sample:
        hs, hS = slice(top * HR_SCALE, (top + crop) * HR_SCALE), slice(left * HR_SCALE, (left + crop) * HR_SCALE)
        hr = _spatial(sample["hr"][:, hs, hS], k, flip)
        contrast = 1 + 0.2 * (torch.rand((), generator=g) - 0.5)
        bright = 0.2 * (torch.rand((), generator=g) - 0.5)
        view["hr"] = hr * contrast + bright + 0.05 * torch.randn(hr.shape, generator=g)
    if "s2" in sample:
        s2 = _spatial(sample["s2"][..., s, S], k, flip)
        gain = 1 + 0.1 * (torch.rand(1, s2.shape[1], 1, 1, generator=g) - 0.5)
        view["s2"] = s2 * gain + 0.02 * torch.randn(s2.shape, generator=g)
    if "s1" in sample:
        s1 = _spatial(sample["s1"][..., s, S], k, flip)
        view["s1"] = s1 + 0.1 * (torch.rand((), generator=g) - 0.5) + 0.05 * torch.randn(s1.shape, generator=g)
    for m in ("s2", "s1"):
        if m in sample:
            view[f"doy_{m}"] = sample[f"doy_{m}"]
            view[f"valid_{m}"] = _subset(sample[f"valid_{m}"], min_frames, g)
    return view, torch.tensor([top, left, k, int(flip)])


def collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def align(x: Tensor, geom_src: Tensor, geom_dst: Tensor) -> tuple[Tensor, Tensor]:
    """Features of one view on another view's canonical grid.

    x: (B, ..., c, c) in the *canonical* orientation of the source crop. Returns
    (y, mask): y (B, ..., c, c) on the destination crop's canonical grid (zeros where the two
    crops do not overlap) and mask (B, c, c) bool, True where y holds source features.
    """
    B, c = x.shape[0], x.shape[-1]
    dy = (geom_dst[:, 0] - geom_src[:, 0]).to(x.device)  # destination row i is source row i + dy
    dx = (geom_dst[:, 1] - geom_src[:, 1]).to(x.device)
    ar = torch.arange(c, device=x.device)
    rows = ar[None, :] + dy[:, None]                      # (B, c)
    cols = ar[None, :] + dx[:, None]
    ok_r, ok_c = (rows >= 0) & (rows < c), (cols >= 0) & (cols < c)
    mask = ok_r[:, :, None] & ok_c[:, None, :]           # (B, c, c)
    flat = rows.clamp(0, c - 1)[:, :, None] * c + cols.clamp(0, c - 1)[:, None, :]  # (B, c, c)
    lead = x.shape[1:-2]
    xf = x.reshape(B, -1, c * c)
    y = torch.gather(xf, 2, flat.reshape(B, 1, c * c).expand(B, xf.shape[1], c * c)).reshape(B, *lead, c, c)
    m = mask.reshape(B, *([1] * len(lead)), c, c)
    return y * m.to(y.dtype), mask
