"""Baselines the Sinkhorn kernels are measured against."""

from __future__ import annotations

import torch


def swav_loop(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """The plain PyTorch loop of SwAV's distributed_sinkhorn (one process): exp, then
    alternating sum/divide over the full matrix. (N, K) in, (N, K) out."""
    Q = torch.exp(scores / eps).t()
    K, N = Q.shape
    Q /= torch.sum(Q)
    for _ in range(iters):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= N
    Q *= N
    return Q.t()
