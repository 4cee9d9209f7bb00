"""UPerNet decode head (Xiao et al., ECCV 2018) over the HR stages.

The setting SkySense's official iSAID recipe uses (mmseg's ``UPerHead`` on SwinV2-H: the four
stage maps of strides 4 / 8 / 16 / 32 and widths 352 / 704 / 1408 / 2816, 512 channels,
pyramid pooling at scales 1, 2, 3, 6, dropout 0.1), with mmseg's parameter names (``psp_modules``,
``bottleneck``, ``lateral_convs``, ``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``; each
conv + BN + ReLU as mmcv's ``ConvModule``: ``conv``, ``bn``) so fine-tuned mmseg weights map
onto it key for key. The fused or geo-context map (on the fusion grid, stride 32) can join the
last stage before the pyramid pooling (``extra_channels``): the multimodal setting. With one
input level it is PSP pooling + bottleneck on that map: the head for S2 / S1-only inputs on the
fused map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError


class ConvBNReLU(nn.Module):
    """conv (no bias) + BatchNorm + ReLU, with mmcv ConvModule's names."""

    def __init__(self, cin: int, cout: int, kernel: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                        align_corners=False)


class UPerNetHead(nn.Module):
    """Pyramid pooling on the deepest map, a top-down FPN over all of them, fused.

    Args:
        in_channels: widths of the input maps, shallowest first (strides doubling).
        num_classes: output channels (class logits).
        channels: the head's width (512 in the official recipe).
        pool_scales: pyramid pooling output sizes.
        dropout: before the classifier.
        extra_channels: width of a map joined to the deepest one (the fused / geo map), 0 = none.

    Returns logits (B, num_classes, H0, W0) at the first map's resolution; callers upsample to
    the image (stride 4 for the HR stages).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, extra_channels: int = 0):
        super().__init__()
        if not in_channels or num_classes < 1:
            raise InputError(f"UPerNetHead: needs at least one input map and one class, got {list(in_channels)}, "
                             f"{num_classes}")
        self.in_channels, self.extra_channels = list(in_channels), extra_channels
        deepest = self.in_channels[-1] + extra_channels
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(deepest, channels))
                                         for s in pool_scales)
        self.bottleneck = ConvBNReLU(deepest + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(self.in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Sequence[Tensor] | Tensor, extra: Tensor | None = None) -> Tensor:
        feats = [feats] if isinstance(feats, Tensor) else list(feats)  # one map: the single-level head
        if len(feats) != len(self.in_channels):
            raise InputError(f"UPerNetHead: expected {len(self.in_channels)} maps, got {len(feats)}")
        for i, (f, c) in enumerate(zip(feats, self.in_channels, strict=True)):
            if f.dim() != 4 or f.shape[1] != c:
                raise InputError(f"UPerNetHead: map {i} must be (B, {c}, H, W), got {tuple(f.shape)}")
        if (extra is None) != (self.extra_channels == 0) or (extra is not None
                                                             and extra.shape[1] != self.extra_channels):
            raise InputError(f"UPerNetHead: built for an extra map of {self.extra_channels} channels, got "
                             f"{None if extra is None else tuple(extra.shape)}")
        deepest = feats[-1] if extra is None else torch.cat([feats[-1], _resize(extra, feats[-1].shape[-2:])], 1)
        size = deepest.shape[-2:]
        psp = [deepest] + [_resize(m(deepest), size) for m in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat(psp, 1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1], strict=True)] + [laterals[-1]]
        outs = [_resize(o, outs[0].shape[-2:]) for o in outs]
        return self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, 1))))
