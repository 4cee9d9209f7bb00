"""SkySense's high-resolution branch: SwinV2 as in the official code (mmcls 0.25).

Parameter names follow the official checkpoint (SKYSENSE_SPEC.md §3): ``patch_embed``,
``stages.s.downsample`` (at the *start* of stages 1-3, post-norm patch merging with mmcls's
channel-major 2x2 unfold), ``stages.s.blocks.b.{norm1, attn.w_msa.*, norm2, ffn.layers.*}``,
extra ``norm3`` every ``extra_norm_every_n_blocks`` blocks, and ``norm{i}`` for each output.
Blocks are res-post-norm, pad the map to whole windows before the qkv projection and then
roll (the official order), and run their window attention as one fused op.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..nn.transformer import FFN
from ..nn.window_attention import WindowAttentionV2


class PatchEmbed(nn.Module):
    """Zero-pad right/bottom to a multiple of the patch, conv patch x patch, LayerNorm."""

    def __init__(self, in_chans: int, dim: int, patch: int = 4):
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(in_chans, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, H / patch, W / patch, dim), channels last."""
        ph, pw = (-x.shape[2]) % self.patch, (-x.shape[3]) % self.patch
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.norm(self.projection(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """mmcls's post-norm merging: pad to even, 2x2 unfold with channel-major order
    (index c * 4 + 2 dy + dx), Linear(4C -> 2C, no bias), LayerNorm(2C)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H2, W2 = x.shape[1] // 2, x.shape[2] // 2
        # (B, H2, dy, W2, dx, C) -> (B, H2, W2, C, dy, dx): nn.Unfold's channel-major order
        x = x.view(B, H2, 2, W2, 2, C).permute(0, 1, 3, 5, 2, 4).reshape(B, H2, W2, 4 * C)
        return self.norm(self.reduction(x))


class _ShiftWindowMSA(nn.Module):
    """mmcls naming: the attention module sits at ``.w_msa``."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.window = window
        self.w_msa = WindowAttentionV2(dim, window, heads)

    def forward(self, x: Tensor, shifted: bool) -> Tensor:
        _, H, W, _ = x.shape
        w = self.window
        shift = w // 2 if shifted and min(H, W) > w else 0  # the official rule: no shift on a one-window map
        ph, pw = (-H) % w, (-W) % w
        if ph or pw:  # pad before the qkv projection, then roll (inside the op)
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        y = self.w_msa.forward_spatial(x, shift)
        return y[:, :H, :W] if (ph or pw) else y


class SwinV2Block(nn.Module):
    """Res-post-norm: x + norm1(attn(x)); x + norm2(ffn(x)); then norm3 where present."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool, mlp_ratio: float, extra_norm: bool):
        super().__init__()
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _ShiftWindowMSA(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim) if extra_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.norm1(self.attn(x, self.shifted))
        x = x + self.norm2(self.ffn(x))
        return self.norm3(x) if self.norm3 is not None else x


class SwinV2Stage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, extra_every: int,
                 downsample_from: int | None):
        super().__init__()
        self.downsample = PatchMerging(downsample_from, dim) if downsample_from else None
        self.blocks = nn.ModuleList(
            SwinV2Block(dim, heads, window, shifted=b % 2 == 1, mlp_ratio=mlp_ratio,
                        extra_norm=extra_every > 0 and (b + 1) % extra_every == 0)
            for b in range(depth))

    grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing and self.training else blk(x)
        return x


class SwinV2Encoder(nn.Module):
    """SwinV2 with the official SkySense HR layout; returns the maps of ``out_indices``.

    Defaults are SwinV2-Huge (embed 352, depths 2/2/18/2, heads 8/16/32/64, window 8,
    extra norm every 6 blocks, output: stage 3 (B, 2816, H/32, W/32)). Any input size: the
    patch embedding and merging pad, and blocks pad to whole windows.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 352, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (8, 16, 32, 64), window_size: int = 8, mlp_ratio: float = 4.0,
                 extra_norm_every_n_blocks: int = 6, out_indices: Sequence[int] = (3,)):
        super().__init__()
        self.in_chans = in_chans
        self.out_indices = tuple(out_indices)
        self.dims = [embed_dim * 2 ** i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(in_chans, embed_dim)
        self.stages = nn.ModuleList(
            SwinV2Stage(self.dims[i], depths[i], num_heads[i], window_size, mlp_ratio,
                        extra_norm_every_n_blocks, self.dims[i - 1] if i else None)
            for i in range(len(depths)))
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.dims[i]))

    def _stages(self) -> Iterable[SwinV2Stage]:
        return cast("Iterable[SwinV2Stage]", self.stages)   # the ModuleList built in __init__

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, in order (units of sharding and activation checkpointing)."""
        return [blk for stage in self._stages() for blk in stage.blocks]

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """({parameter name: layer id}, depth) for layer-wise lr decay over the whole Swin:
        the patch embedding 0, block b of the network b (1-based over all stages), a stage's
        downsampling with its first block, the output norms the top (depth)."""
        ids: dict[str, int] = {}
        first: dict[int, int] = {}   # stage -> layer id of its first block
        n = 0
        for s, stage in enumerate(self._stages()):
            for b, blk in enumerate(stage.blocks):
                n += 1
                first.setdefault(s, n)
                ids |= {f"stages.{s}.blocks.{b}.{k}": n for k, _ in blk.named_parameters()}
        for name, _ in self.named_parameters():
            if name not in ids:
                sid = name.split(".")[1] if name.startswith("stages.") else None
                ids[name] = 0 if name.startswith("patch_embed.") else first[int(sid)] if sid is not None else n
        return ids, n

    def left_at_init(self) -> list[str]:
        """Keys an official HR checkpoint does not hold: the released file carries the last
        stage's output norm only, so the norms of earlier out indices start at init (as the
        official iSAID fine-tuning config meets them)."""
        last = len(self.stages) - 1
        return [f"norm{i}.{p}" for i in self.out_indices if i != last for p in ("weight", "bias")]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """(B, in_chans, H, W) -> one (B, C_i, H / 2^(i+2), W / 2^(i+2)) map per out index."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise InputError(f"SwinV2Encoder: expected (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}")
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


__all__ = ["PatchEmbed", "PatchMerging", "SwinV2Block", "SwinV2Encoder"]
