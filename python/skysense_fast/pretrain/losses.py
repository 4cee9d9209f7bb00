"""The pretraining objectives' building blocks, each small enough to check by hand.

* :class:`DINOHead` and :func:`distill_loss`: self-distillation (DINO): the student's
  distribution over ``out_dim`` prototypes matches the centred, sharpened teacher's.
* :func:`object_assign` and :func:`object_pool`: object-level features, pixels grouped per
  image with the Sinkhorn op around seeds pooled on a coarse grid (the paper says pixels are
  "clustered with Sinkhorn-Knopp"; how the clusters start is not published — a coarse grid
  of seeds, as in dense contrastive methods, gives spatially coherent, balanced groups).
* :func:`info_nce`: cross-modal alignment, InfoNCE between two modalities' features of the
  same pixel, the other pixels of the same image as negatives (rank-independent: a data-
  parallel run computes the same loss as a single process on the same batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..ops.sinkhorn import sinkhorn


class DINOHead(nn.Module):
    """MLP (3 layers, GELU) -> L2-normalised bottleneck -> ``out_dim`` unit-norm prototypes.

    The last layer's rows are normalised in the forward (DINO's weight norm with the gain
    fixed to 1), so no parametrisation is needed and FSDP shards it like any Linear.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))


def teacher_targets(teacher: Tensor, center: Tensor, teacher_temp: float, centering: str = "ema",
                    sinkhorn_iters: int = 3) -> Tensor:
    """The teacher's distributions over the prototypes, (M, K), no gradient.

    ``ema``: softmax((t - center) / teacher_temp) (DINO: a running centre, then sharpening).
    ``sinkhorn``: the Sinkhorn op over the M rows, Q proportional to exp(t / teacher_temp) with
    rows summing to 1 and every prototype taking an equal share (DINOv2's centring; over the
    rows this process holds — DINOv2 also all-reduces the column sums across ranks).
    """
    t = teacher.detach().float()
    if centering == "sinkhorn":
        if t.shape[0] == 0:
            return t
        return sinkhorn(t, teacher_temp, sinkhorn_iters)
    return torch.softmax((t - center) / teacher_temp, dim=-1)


def distill_loss(student: Tensor, teacher: Tensor, center: Tensor, student_temp: float, teacher_temp: float,
                 weight: Tensor | None = None, sample: Tensor | None = None, num_samples: int | None = None,
                 centering: str = "ema", sinkhorn_iters: int = 3) -> Tensor:
    """Cross-entropy H(teacher targets, softmax(s / student_temp)); the targets are
    softmax((t - center) / teacher_temp) (``centering="ema"``) or Sinkhorn-balanced
    (``"sinkhorn"``, see :func:`teacher_targets`).

    student, teacher: (M, K) logits of matching rows; center (K,); weight (M,) >= 0 (default
    1 each). Without ``sample``: the weighted mean over the rows (0 when there are none).
    With ``sample`` (M,) ids in [0, num_samples): the weighted mean within each sample, then
    the plain mean over the ``num_samples`` samples (a sample without rows counts 0) — so
    the loss of a batch is the mean of its samples' losses, the same however the batch is
    split over ranks. The teacher side carries no gradient.
    """
    if student.shape != teacher.shape:
        raise InputError(f"distill_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must match")
    target = teacher_targets(teacher, center, teacher_temp, centering, sinkhorn_iters)
    per_row = -(target * torch.log_softmax(student.float() / student_temp, dim=-1)).sum(-1)
    w = torch.ones_like(per_row) if weight is None else weight.float()
    if sample is None:
        return (per_row * w).sum() / w.sum().clamp_min(1e-12)
    if num_samples is None:
        raise InputError("distill_loss: num_samples is required with sample")
    num = per_row.new_zeros(num_samples).index_add(0, sample, per_row * w)
    den = per_row.new_zeros(num_samples).index_add(0, sample, w)
    return (num / den.clamp_min(1e-12)).mean()


@torch.no_grad()
def object_assign(features: Tensor, grid: int, epsilon: float = 0.05, num_iters: int = 3) -> Tensor:
    """Soft assignment of each image's pixels to ``grid**2`` objects (Sinkhorn, balanced).

    features: (B, C, h, w). Seeds are the features average-pooled on a grid x grid layout;
    scores are cosine similarities pixel-seed; the Sinkhorn op makes every object take an
    equal share of the pixels. Returns Q (B, h w, grid**2), rows summing to 1.
    """
    with torch.autocast(features.device.type, enabled=False):   # float32 scores, also under bf16 training
        f = F.normalize(features.float().flatten(2), dim=1)                    # (B, C, P)
        seeds = F.normalize(F.adaptive_avg_pool2d(features.float(), grid).flatten(2), dim=1)  # (B, C, S)
        return sinkhorn(f.transpose(1, 2) @ seeds, epsilon, num_iters)


def object_pool(features: Tensor, assignment: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Object features: each object's assignment-weighted mean of the (unmasked) pixels.

    features (B, C, P), assignment (B, P, S), mask (B, P) bool or None. Returns
    (objects (B, S, C), mass (B, S)): mass = the object's assigned pixel count inside the mask.
    """
    features = features.to(torch.promote_types(features.dtype, assignment.dtype))
    a = assignment.to(features.dtype)
    if mask is not None:
        a = a * mask[..., None].to(a.dtype)
    mass = a.sum(1)                                                            # (B, S)
    objects = (a.transpose(1, 2) @ features.transpose(1, 2)) / mass.clamp_min(1e-6)[..., None]
    return objects, mass


def info_nce(za: Tensor, zb: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE within each image: za, zb (B, N, d), row n of each is the same place.

    Features are L2-normalised here; logits = za zb^T / temperature per image; the positive
    of row n is column n. Returns the mean over images, rows and both directions.
    """
    if za.shape != zb.shape or za.dim() != 3 or za.shape[1] < 2:
        raise InputError(f"info_nce: za and zb must both be (B, N >= 2, d), got {tuple(za.shape)}, {tuple(zb.shape)}")
    za, zb = F.normalize(za.float(), dim=-1), F.normalize(zb.float(), dim=-1)
    logits = za @ zb.transpose(1, 2) / temperature                            # (B, N, N)
    target = torch.arange(za.shape[1], device=za.device).expand(za.shape[0], -1)
    return 0.5 * (F.cross_entropy(logits.transpose(1, 2), target) + F.cross_entropy(logits, target))
