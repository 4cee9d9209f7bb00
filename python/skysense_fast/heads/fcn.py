"""A single-scale dense head in the manner of mmseg's FCNHead (3 x 3 ``ConvBNReLU`` convs, then
a 1 x 1 classifier named ``conv_seg``; without mmseg's default concatenation of the input), for
a map that has no pyramid: the fused map of a task on
Sentinel series alone (temporal crop mapping), one logit map per class on its grid."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import InputError
from .upernet import ConvBNReLU


class FCNHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 2,
                 dropout: float = 0.1):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or channels < 1 or num_convs < 1:
            raise InputError(f"FCNHead: sizes must be positive, got {in_channels}, {num_classes}, {channels}, "
                             f"{num_convs}")
        self.in_channels = in_channels
        self.convs = nn.Sequential(*(ConvBNReLU(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, h, w) -> (B, num_classes, h, w)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"FCNHead: expected (B, {self.in_channels}, h, w), got {tuple(x.shape)}")
        return self.conv_seg(self.dropout(self.convs(x)))
