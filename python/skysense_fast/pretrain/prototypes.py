"""Geo-context prototype learning: the region bank follows the fused features.

Per batch (SKYSENSE_SPEC.md §9): each sample's fused pixel features F (N, d) are compared
with its region's prototypes P_r (N_p, d) by cosine similarity; the Sinkhorn op gives the
balanced assignment S (N, N_p); the region's new estimate is P̄_r = Sᵀ F, normalised by the
assigned mass; and P_r <- normalise(m P_r + (1 - m) normalise(P̄_r)). No gradient reaches the
bank. Choices the paper leaves open, made here and kept as config fields: epsilon 0.05 (the
one value reported in secondary notes), momentum 0.99, Sinkhorn per sample (not per region
over the batch) so that a data-parallel run updates the bank exactly as one process would
(the per-region sums are all-reduced), and unit-norm prototypes (cosine similarity).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..models.geo_context import region_index
from ..ops.sinkhorn import sinkhorn


@torch.no_grad()
def region_estimates(features: Tensor, regions: Tensor, bank: Tensor, epsilon: float = 0.05,
                     num_iters: int = 3, among: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-region sums Σ Sᵀ F and masses Σ S over a batch, for the regions that occur.

    features (B, d, h, w) fused features; regions (B,) region ids; bank (R, N_p, d);
    among: the sorted region ids to report (default: those in ``regions``; a data-parallel
    run passes the union over ranks so that every rank's sums line up). Returns
    (ids (U,), sums (U, N_p, d), mass (U, N_p)) — only U rows, never the whole bank.
    """
    with torch.autocast(features.device.type, enabled=False):   # a float32 statistic, also under bf16 training
        f = F.normalize(features.float().flatten(2).transpose(1, 2), dim=-1)  # (B, N, d)
        P = bank[regions].float()                                             # (B, N_p, d)
        S = sinkhorn(f @ P.transpose(1, 2), epsilon, num_iters)               # (B, N, N_p)
        ids = regions.unique() if among is None else among
        slot = torch.searchsorted(ids, regions)
        sums = torch.zeros((ids.numel(), *bank.shape[1:]), dtype=torch.float32, device=bank.device)
        mass = torch.zeros((ids.numel(), bank.shape[1]), dtype=torch.float32, device=bank.device)
        sums.index_add_(0, slot, S.transpose(1, 2) @ f)
        mass.index_add_(0, slot, S.sum(1))
    return ids, sums, mass


def _union_over_ranks(regions: Tensor) -> Tensor:
    """Sorted unique region ids of every rank's batch (all ranks have equal batch sizes)."""
    gathered = [torch.empty_like(regions) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, regions)
    return torch.cat(gathered).unique()


@torch.no_grad()
def update_bank(bank: Tensor, features: Tensor, latlon: Tensor, momentum: float = 0.99, epsilon: float = 0.05,
                num_iters: int = 3) -> Tensor:
    """EMA update of the prototypes of the regions in the batch, in place; returns the region ids.

    Under torch.distributed the sums are all-reduced, so every rank ends with the same bank.
    """
    regions = region_index(latlon, bank.shape[0]).to(bank.device)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    ids, sums, mass = region_estimates(features, regions, bank, epsilon, num_iters,
                                       among=_union_over_ranks(regions) if distributed else None)
    if distributed:
        dist.all_reduce(sums)
        dist.all_reduce(mass)
    estimate = F.normalize(sums / mass.clamp_min(1e-12)[..., None], dim=-1)
    bank[ids] = F.normalize(momentum * bank[ids].float() + (1 - momentum) * estimate, dim=-1).to(bank.dtype)
    return regions
