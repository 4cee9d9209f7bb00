"""SkySense's multimodal temporal fusion on the fused ops.

:class:`MultimodalTemporalFusion` has the official fusion checkpoint's parameter names and
shapes (SKYSENSE_SPEC.md §6: ``porj_linear`` (sic), ``cls_token``, ``layers.i.ln1``,
``layers.i.attn.attn.{in_proj_weight, in_proj_bias, out_proj}``, ``layers.i.ln2``,
``layers.i.ffn.layers.{0.0, 1}``); :class:`TemporalPositionEncoding` holds the official
``ctpe`` day-of-year table. Each pixel's sequence [class token, HR, S2 x T1, S1 x T2] runs
through pre-norm transformer layers whose attention is ``temporal_attention`` (any number of
pixels; the layers are :mod:`skysense_fast.nn.transformer`'s); the class token's output is
the fused feature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..ops.fusion_tokens import DATE_TABLE_DAYS, fusion_tokens
from .transformer import TransformerLayer


class TemporalPositionEncoding(nn.Module):
    """The learned day-of-year table, ``ctpe`` (1, 365, dim); day d uses row min(d, 365) - 1."""

    def __init__(self, dim: int = 2816, device=None, dtype=None):
        super().__init__()
        self.ctpe = nn.Parameter(torch.zeros(1, DATE_TABLE_DAYS, dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.ctpe, std=0.02)

    def forward(self, doy: Tensor) -> Tensor:
        """Embeddings of integer days of year 1..366, shape doy.shape + (dim,)."""
        if doy.is_floating_point() or ((doy < 1) | (doy > 366)).any():
            raise InputError("TemporalPositionEncoding: doy must be integer days of year in 1..366")
        return self.ctpe[0, doy.long().clamp(max=DATE_TABLE_DAYS) - 1]


class MultimodalTemporalFusion(nn.Module):
    """Projection to the fusion width, class token, transformer layers; the class token out.

    Defaults are the official SkySense fusion (2816 -> 1024, 24 layers, 16 heads, MLP 4096,
    LayerNorm eps 1e-5). ``fused=False`` runs torch's nn.MultiheadAttention instead of the
    fused op (same weights): the reference for tests and A/B.
    """

    grad_checkpointing = False

    def __init__(self, in_dims: int = 2816, embed_dims: int = 1024, num_layers: int = 24, num_heads: int = 16,
                 mlp_ratio: float = 4.0, ln_eps: float = 1e-5, fused: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.embed_dims = embed_dims
        self.fused = fused
        self.porj_linear = nn.Linear(in_dims, embed_dims, **dd)  # the official spelling
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims, **dd))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(embed_dims, num_heads, int(embed_dims * mlp_ratio), ln_eps, **dd)
                                    for _ in range(num_layers))

    def forward(self, tokens: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """tokens (N, L, in_dims), key_padding_mask (N, L) True = ignore -> (N, embed_dims)."""
        N = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(N, -1, -1), self.porj_linear(tokens)], 1)
        if key_padding_mask is not None:  # the class token is always a valid key
            key_padding_mask = torch.cat([key_padding_mask.new_zeros(N, 1), key_padding_mask], 1)
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, key_padding_mask, self.fused, use_reentrant=False)
            else:
                x = layer(x, key_padding_mask, self.fused)
        return x[:, 0]

    def forward_maps(self, hr: Tensor | None = None, s2: Tensor | None = None, s1: Tensor | None = None, *,
                     date_table: Tensor | None = None, **dates_and_masks) -> Tensor:
        """Per-modality maps on the fusion grid -> fused map (B, embed_dims, h, w).

        Takes :func:`~skysense_fast.ops.fusion_tokens`' arguments (``doy_*``, ``valid_*``)."""
        x = next(t for t in (hr, s2, s1) if t is not None)
        B, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        tokens, mask = fusion_tokens(hr, s2, s1, date_table=date_table, **dates_and_masks)
        fused = self(tokens, mask)
        return fused.view(B, h, w, -1).permute(0, 3, 1, 2)
