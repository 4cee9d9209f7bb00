"""Linear segmentation probe: the frozen-feature protocol for dense tasks (as DINOv2's linear
segmentation evaluation): the HR stage maps resized to the first one's grid and concatenated,
a BatchNorm and one 1 x 1 convolution, so what is measured is the features, not a decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError


class LinearSegmentationHead(nn.Module):
    """Maps (shallowest first) -> logits (B, num_classes, H0, W0) on the first map's grid."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, extra_channels: int = 0):
        super().__init__()
        if not in_channels or num_classes < 1:
            raise InputError(f"LinearSegmentationHead: needs input maps and classes, got {list(in_channels)}, "
                             f"{num_classes}")
        self.in_channels, self.extra_channels = list(in_channels), extra_channels
        width = sum(self.in_channels) + extra_channels
        self.bn = nn.BatchNorm2d(width)
        self.conv_seg = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: Sequence[Tensor] | Tensor, extra: Tensor | None = None) -> Tensor:
        feats = [feats] if isinstance(feats, Tensor) else list(feats)
        if [f.shape[1] for f in feats] != self.in_channels or (extra is None) != (self.extra_channels == 0):
            raise InputError(f"LinearSegmentationHead: built for maps of {self.in_channels} channels"
                             f"{f' and an extra map of {self.extra_channels}' if self.extra_channels else ''}, got "
                             f"{[tuple(f.shape) for f in feats]}, extra "
                             f"{None if extra is None else tuple(extra.shape)}")
        size = feats[0].shape[-2:]
        maps = feats + ([extra] if extra is not None else [])
        x = torch.cat([m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                       for m in maps], 1)
        return self.conv_seg(self.bn(x))
