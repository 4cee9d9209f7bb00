"""Baselines for the window attention core: timm's eager way, and torch SDPA with an
explicit bias + mask. Both take q, k, v in the spatial layout (B, H, W, heads, hd), as the
fused op does, so all three do the same work (roll, partition, scores, bias, mask,
softmax, PV, reverse, roll back)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from skysense_fast.ops.window_attention_reference import LOGIT_SCALE_MAX, shift_mask, window_attention_reference


def eager(q, k, v, window, shift, logit_scale, bias):
    """timm's SwinV2 arithmetic, step by step (the reference is written that way)."""
    return window_attention_reference(q, k, v, (window, window), (shift, shift), logit_scale, bias)


def sdpa(q, k, v, window, shift, logit_scale, bias):
    B, H, W, nh, hd = q.shape
    N = window * window

    def windows(t):
        if shift:
            t = torch.roll(t, (-shift, -shift), (1, 2))
        return t.view(B, H // window, window, W // window, window, nh, hd).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, nh, N, hd)

    qw, kw, vw = windows(q), windows(k), windows(v)
    tau = torch.clamp(logit_scale.view(nh, 1, 1), max=LOGIT_SCALE_MAX).exp()
    qw, kw = F.normalize(qw, dim=-1) * tau, F.normalize(kw, dim=-1)
    mask = bias.unsqueeze(0)
    if shift:
        m = shift_mask(H, W, (window, window), (shift, shift), q.device)
        mask = (bias[None, None] + m[None, :, None]).expand(B, -1, -1, -1, -1).reshape(-1, nh, N, N)
    o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=1.0)
    o = o.view(B, H // window, W // window, nh, window, window, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, nh, hd)
    return torch.roll(o, (shift, shift), (1, 2)) if shift else o
