"""SkySense's Sentinel-2 / Sentinel-1 branches: ViT (mmseg 0.x layout) and the UPHead.

Parameter names follow the official checkpoints (SKYSENSE_SPEC.md §4-5): ``patch_embed.
projection``, ``cls_token``, ``pos_embed`` (1, 1 + 16 x 16, dim), ``layers.i.{ln1, attn.attn.*,
ln2, ffn.layers.*}`` (pre-norm, no final norm), and the head's ``decoder.0`` (1 x 1 conv to
16 x 2816 channels, then PixelShuffle(4)). The transformer layers are the fusion's, so their
attention runs on the fused temporal-attention op.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..nn.transformer import TransformerLayer


class ViTEncoder(nn.Module):
    grad_checkpointing = False

    """Patch 4 ViT over each acquisition; acquisitions folded into the batch.

    Defaults are the official ViT-L (1024 wide, 24 layers, 16 heads, MLP 4096, 64 x 64 input
    tiles: a 16 x 16 position grid). Other input sizes get the position grid resized
    bicubically (the class token's entry kept), as the official code does.
    """

    def __init__(self, in_chans: int = 10, embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                 mlp_ratio: float = 4.0, patch: int = 4, img_size: int = 64, ln_eps: float = 1e-5):
        super().__init__()
        self.in_chans, self.patch = in_chans, patch
        self.grid = img_size // patch
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(in_chans, embed_dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(embed_dim, num_heads, int(embed_dim * mlp_ratio), ln_eps)
                                    for _ in range(depth))

    def blocks(self) -> list[nn.Module]:
        """The transformer layers, in order (units of sharding and activation checkpointing)."""
        return list(self.layers)

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """({parameter name: layer id}, depth) for layer-wise lr decay: the embeddings 0, layer
        i i + 1."""
        ids = {f"layers.{i}.{k}": i + 1 for i, layer in enumerate(self.layers) for k, _ in layer.named_parameters()}
        return {name: ids.get(name, 0) for name, _ in self.named_parameters()}, len(self.layers)

    def _pos(self, h: int, w: int) -> Tensor:
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_chans, H, W) -> (N, dim, ceil(H/4), ceil(W/4)), the last layer's tokens."""
        return self.layer_maps(x, (len(self.layers) - 1,))[0]

    def layer_maps(self, x: Tensor, indices: tuple[int, ...]) -> list[Tensor]:
        """The patch tokens after each layer of ``indices`` (0-based, ascending) as
        (N, dim, ceil(H/4), ceil(W/4)) maps; layers past the last index are not run."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise InputError(f"ViTEncoder: expected (N, {self.in_chans}, H, W) input, got {tuple(x.shape)}")
        ph, pw = (-x.shape[2]) % self.patch, (-x.shape[3]) % self.patch
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        x = cast(nn.Conv2d, self.patch_embed.projection)(x)   # set in __init__
        N, C, h, w = x.shape
        x = torch.cat([self.cls_token.expand(N, -1, -1), x.flatten(2).transpose(1, 2)], 1) + self._pos(h, w)
        maps = []
        for i, layer in enumerate(self.layers[:max(indices) + 1]):
            x = checkpoint(layer, x, use_reentrant=False) if self.grad_checkpointing and self.training else layer(x)
            if i in indices:
                maps.append(x[:, 1:].transpose(1, 2).reshape(N, C, h, w))
        return maps


class UPHead(nn.Module):
    """1 x 1 conv to out_dim x 16 channels, PixelShuffle(4): the ViT map to the Swin stage-3
    width and grid (``decoder.0`` in the official files)."""

    def __init__(self, in_dim: int = 1024, out_dim: int = 2816, scale: int = 4):
        super().__init__()
        self.decoder = nn.Sequential(nn.Conv2d(in_dim, out_dim * scale * scale, 1), nn.PixelShuffle(scale))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """The 1 x 1 convolution as a GEMM over channels-last pixels, the shuffle as one
        permute: the same numbers as ``self.decoder(x)``, 2-2.7x faster forward and backward
        on the small maps the ViT gives (the convolution path pays im2col-style overheads)."""
        conv, r = cast(nn.Conv2d, self.decoder[0]), self.scale
        N, _, h, w = x.shape
        y = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)       # (N, h, w, C r r)
        y = y.reshape(N, h, w, -1, r, r).permute(0, 3, 1, 4, 2, 5)                    # (N, C, h, r, w, r)
        return y.reshape(N, y.shape[1], h * r, w * r)


__all__ = ["UPHead", "ViTEncoder"]

