"""Transformer layers shared by the models and the fusion (mmcv's parameter names, as the
official SkySense checkpoints store them): the ViT encoders' layers and the fusion's are the
same pre-norm layer, whose attention runs ``temporal_attention`` on one packed projection.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.temporal_attention import MAX_TOKENS, temporal_attention_qkv

__all__ = ["FFN", "MultiheadSelfAttention", "TransformerLayer"]


class MultiheadSelfAttention(nn.Module):
    """Self-attention with mmcv's wrapper naming (the torch module sits at ``.attn``): on the
    fused op for sequences up to MAX_TOKENS, SDPA for longer ones, torch's module unfused."""

    def __init__(self, dim: int, heads: int, device=None, dtype=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, device=device, dtype=dtype)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None, fused: bool) -> Tensor:
        a = self.attn
        if not fused:
            return a(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]
        S, T, C = x.shape
        qkv = F.linear(x, a.in_proj_weight, a.in_proj_bias).view(S, T, 3, a.num_heads, -1)
        if T > MAX_TOKENS:  # long sequences (a ViT's 257 tokens): few of them, torch's SDPA serves them
            q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
            mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            o = temporal_attention_qkv(qkv, key_padding_mask)
        return a.out_proj(o.transpose(1, 2).reshape(S, T, C))  # free for the fused op: o is stored (S, T, heads, hd)


class FFN(nn.Module):
    """mmcv's FFN naming: ``layers.0.0`` (Linear + GELU) and ``layers.1`` (Linear)."""

    def __init__(self, dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden, device=device, dtype=dtype), nn.GELU()),
                                    nn.Linear(hidden, dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class TransformerLayer(nn.Module):
    """Pre-norm: x + attn(ln1 x), then x + ffn(ln2 x)."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.ln1 = nn.LayerNorm(dim, eps=eps, **dd)
        self.attn = MultiheadSelfAttention(dim, heads, **dd)
        self.ln2 = nn.LayerNorm(dim, eps=eps, **dd)
        self.ffn = FFN(dim, hidden, **dd)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, fused: bool = True) -> Tensor:
        x = x + self.attn(self.ln1(x), key_padding_mask, fused)
        return x + self.ffn(self.ln2(x))
