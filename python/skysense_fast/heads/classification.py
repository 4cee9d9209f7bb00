"""Scene classification on pooled SkySense features, single- or multi-label.

A global average pool of one feature map (HR last stage, fused or geo-context), a LayerNorm and a
linear classifier: as a linear probe on a frozen backbone (the standard protocol for
foundation-model features, SkySense's paper included) or on top of a full fine-tune. Single-label
(e.g. AID, NWPU-RESISC45) trains with cross-entropy, multi-label (BigEarthNet) with binary
cross-entropy per class.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError


class SceneClassifier(nn.Module):
    """(B, C, h, w) features (or (B, C) pooled) -> (B, num_classes) logits."""

    def __init__(self, in_channels: int, num_classes: int, multi_label: bool = False, dropout: float = 0.0):
        super().__init__()
        if in_channels < 1 or num_classes < 2 and not multi_label:
            raise InputError(f"SceneClassifier: needs >= 1 channel and >= 2 classes (single-label), got "
                             f"{in_channels}, {num_classes}")
        self.in_channels, self.num_classes, self.multi_label = in_channels, num_classes, multi_label
        self.norm = nn.LayerNorm(in_channels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.in_channels:
            raise InputError(f"SceneClassifier: expected (B, {self.in_channels}, h, w) or (B, {self.in_channels}), "
                             f"got {tuple(x.shape)}")
        pooled = x.mean((2, 3)) if x.dim() == 4 else x
        return self.fc(self.dropout(self.norm(pooled)))

    def loss(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Cross-entropy on class indices (single-label) or binary cross-entropy on a (B,
        num_classes) 0/1 target (multi-label); ``weight`` per class."""
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=weight)
        return F.cross_entropy(logits, target.long(), weight=weight)

    def predict(self, logits: Tensor, threshold: float = 0.5) -> Tensor:
        """Class indices (single-label) or a 0/1 (B, num_classes) mask (multi-label)."""
        return (logits.sigmoid() >= threshold) if self.multi_label else logits.argmax(1)
