"""Attentional geo-context integration (SkySense §3.3): region prototypes.

The globe is split into ``regions`` cells of an equal-angle latitude x longitude grid
(``sqrt(regions)`` bands each way; 4,096 regions = 64 x 64 cells of 2.8125 deg x 5.625 deg).
The paper's partition is not published (SKYSENSE_SPEC.md §9, UNCONFIRMED); this rule is ours
and is a config field. Each region holds ``prototypes`` vectors of the fusion width, learned
by Sinkhorn assignment + EMA during pretraining (a buffer: no gradient reaches it). A
sample's fused features attend over its region's prototypes and the result is concatenated:
F = [F_mm, softmax(F_mm P_r^T / sqrt(d)) P_r].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InputError


def region_index(latlon: Tensor, regions: int) -> Tensor:
    """(B, 2) latitude in [-90, 90], longitude in [-180, 180] degrees -> (B,) region ids.

    Row-major over an n x n grid, n = sqrt(regions): row from latitude (south to north),
    column from longitude (west to east); 90 N falls in the last row, 180 E wraps to 180 W.
    """
    n = math.isqrt(regions)
    if n * n != regions:
        raise InputError(f"region_index: regions must be a square number (an n x n grid), got {regions}")
    if latlon.dim() != 2 or latlon.shape[1] != 2:
        raise InputError(f"geolocation must have shape (B, 2) = (latitude, longitude), got {tuple(latlon.shape)}")
    lat, lon = latlon[:, 0].double(), latlon[:, 1].double()
    bad = ~((lat >= -90) & (lat <= 90) & (lon >= -180) & (lon <= 180))
    if not torch.compiler.is_compiling() and bad.any():  # (a data-dependent check: eager only)
        i = int(bad.nonzero()[0])
        raise InputError(f"geolocation out of range for sample {i}: latitude {lat[i].item()} (must be in [-90, 90]), "
                         f"longitude {lon[i].item()} (must be in [-180, 180])")
    row = ((lat + 90) / 180 * n).floor().clamp(max=n - 1).long()
    col = ((lon + 180) / 360 * n).floor().long() % n
    return row * n + col


class GeoContext(nn.Module):
    """Region prototype bank (regions, prototypes, dim) and the attention over it."""

    prototypes: Tensor   # a buffer (registered in __init__)

    def __init__(self, dim: int = 1024, regions: int = 4096, prototypes: int = 100, device=None, dtype=None):
        super().__init__()
        self.regions, self.dim = regions, dim
        bank = torch.randn(regions, prototypes, dim, device=device, dtype=dtype)
        self.register_buffer("prototypes", torch.nn.functional.normalize(bank, dim=-1))

    def forward(self, fused: Tensor, latlon: Tensor) -> Tensor:
        """fused (B, dim, h, w), latlon (B, 2) -> (B, 2 dim, h, w)."""
        B, C, h, w = fused.shape
        if latlon.shape[0] != B:
            raise InputError(f"geolocation has {latlon.shape[0]} rows for a batch of {B}")
        P = self.prototypes[region_index(latlon, self.regions).to(self.prototypes.device)].to(fused.dtype)  # (B, Np, d)
        f = fused.flatten(2).transpose(1, 2)  # (B, hw, d)
        ctx = torch.softmax(f @ P.transpose(1, 2) / math.sqrt(C), dim=-1) @ P
        return torch.cat([fused, ctx.transpose(1, 2).reshape(B, C, h, w)], 1)
