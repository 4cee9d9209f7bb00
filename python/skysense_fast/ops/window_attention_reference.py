"""Shifted-window attention in plain PyTorch: the specification of ``window_attention``.

Kept apart from the op's registration so that it reads as the definition it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_VALUE = -100.0  # Swin's value for pairs of tokens from different shifted regions
LOGIT_SCALE_MAX = math.log(1.0 / 0.01)  # SwinV2 clamps the learned log-scale at log(100)


def padded_size(size: int, window: int) -> int:
    return size + (-size) % window


def shift_mask(Hp: int, Wp: int, window: tuple[int, int], shift: tuple[int, int], device=None) -> Tensor:
    """Swin's additive mask for shifted windows, (num_windows, N, N): 0 for pairs of tokens
    of the same region of the rolled map, MASK_VALUE otherwise. Regions along each axis:
    [0, P - w), [P - w, P - s), [P - s, P) of the padded size P (one region when s = 0)."""

    def regions(P: int, w: int, s: int) -> Tensor:
        y = torch.arange(P, device=device)
        if s == 0:
            return torch.zeros_like(y)
        return (y >= P - w).long() + (y >= P - s).long()

    ry, rx = regions(Hp, window[0], shift[0]), regions(Wp, window[1], shift[1])
    region = (ry[:, None] * 3 + rx[None, :]).view(Hp // window[0], window[0], Wp // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])  # (nW, N)
    same = region[:, :, None] == region[:, None, :]
    return torch.where(same, 0.0, MASK_VALUE)


def window_attention_reference(q: Tensor, k: Tensor, v: Tensor, window: tuple[int, int],
                               shift: tuple[int, int] = (0, 0), logit_scale: Tensor | None = None,
                               bias: Tensor | None = None, mask: Tensor | None = None,
                               scale: float | None = None) -> Tensor:
    """Multi-head attention inside (shifted) windows of a feature map.

    Args:
        q, k, v: (B, H, W, heads, head_dim), the un-partitioned spatial layout.
        window: (wh, ww) window size, each >= 1 (the CPU kernel takes up to 16 per side; larger
            windows run this reference there).
        shift: (sh, sw) cyclic shift, 0 <= s < window (0: plain windows).
        logit_scale: (heads,) SwinV2 learned log-scale: cosine attention, scores =
            normalize(q) . normalize(k) * exp(min(logit_scale, log 100)). None: Swin V1 dot
            product, scores = (q * scale) . k.
        bias: (heads, N, N), N = wh * ww, added to the scores of every window (the relative /
            continuous position bias).
        mask: (M, N, N), added to the scores of window number i (counting windows of all
            images in order, image-major) as mask[i % M]; timm's windowed-module calling
            convention. Not needed for the shift: that mask is built from the shift.
        scale: V1 score scale, default head_dim ** -0.5 (ignored with logit_scale).

    Returns:
        (B, H, W, heads, head_dim).

    Semantics (SwinV2-H as in the official SkySense HR encoder): q, k, v are zero-padded on
    the right and bottom to multiples of the window (padded tokens take part in attention,
    never masked out), rolled by -shift, split into windows; per window and head
    softmax(scores + bias + shift mask + mask) @ v; then the windows are put back, rolled by
    +shift and cropped. A module that pads the input *before* its qkv projection (as Swin
    does) passes the padded q, k, v.
    """
    B, H, W, nh, hd = q.shape
    wh, ww = window
    sh, sw = shift
    Hp, Wp = padded_size(H, wh), padded_size(W, ww)
    N = wh * ww

    def to_windows(t: Tensor) -> Tensor:  # (B, H, W, nh, hd) -> (B * nW, nh, N, hd)
        t = F.pad(t, (0, 0, 0, 0, 0, Wp - W, 0, Hp - H))
        if sh or sw:
            t = torch.roll(t, shifts=(-sh, -sw), dims=(1, 2))
        t = t.view(B, Hp // wh, wh, Wp // ww, ww, nh, hd).permute(0, 1, 3, 5, 2, 4, 6)
        return t.reshape(-1, nh, N, hd)

    qw, kw, vw = to_windows(q), to_windows(k), to_windows(v)
    if logit_scale is not None:
        tau = torch.clamp(logit_scale.reshape(nh, 1, 1), max=LOGIT_SCALE_MAX).exp()
        attn = (F.normalize(qw, dim=-1) @ F.normalize(kw, dim=-1).transpose(-2, -1)) * tau
    else:
        attn = (qw * (hd ** -0.5 if scale is None else scale)) @ kw.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias.unsqueeze(0)
    nW = (Hp // wh) * (Wp // ww)
    if sh or sw:
        attn = (attn.view(B, nW, nh, N, N) + shift_mask(Hp, Wp, window, shift, q.device).to(attn.dtype)[None, :, None])
        attn = attn.view(-1, nh, N, N)
    if mask is not None:
        idx = torch.arange(B * nW, device=q.device) % mask.shape[0]
        attn = attn + mask.to(attn.dtype)[idx].unsqueeze(1)
    o = attn.softmax(dim=-1) @ vw  # (B * nW, nh, N, hd)

    o = o.view(B, Hp // wh, Wp // ww, nh, wh, ww, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, nh, hd)
    if sh or sw:
        o = torch.roll(o, shifts=(sh, sw), dims=(1, 2))
    return o[:, :H, :W].contiguous()
