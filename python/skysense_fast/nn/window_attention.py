"""Drop-in window-attention modules on the fused ``window_attention`` op.

:class:`WindowAttention` (Swin V1) and :class:`WindowAttentionV2` (SwinV2: cosine attention,
learned logit scale, continuous position bias, q/v biases) take the constructor arguments,
parameter and buffer names and ``forward(x, mask=None)`` of timm's
``swin_transformer.WindowAttention`` and ``swin_transformer_v2.WindowAttention``, so their
weights load unchanged. ``forward_spatial(x, shift)`` runs the whole shifted-window path of
a block on a (B, H, W, C) map in one op (the roll, partition and reverse included).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..ops.window_attention import window_attention


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def relative_position_index(window: tuple[int, int], device=None) -> Tensor:
    """(N, N) index into a ((2 wh - 1) (2 ww - 1))-entry table of relative offsets."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0], device=device), torch.arange(window[1], device=device),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[:, :, 0] + window[0] - 1) * (2 * window[1] - 1) + (rel[:, :, 1] + window[1] - 1)


def _no_attn_drop(p: float) -> None:
    if p > 0:
        raise InputError(f"attn_drop={p}: the fused window attention has no attention dropout "
                         "(Swin and SwinV2 use 0); use timm's module for attention dropout")


class _FusedWindowAttention(nn.Module):
    """What both versions share: qkv, the fused core, the output projection."""

    window_size: tuple[int, int]
    num_heads: int
    proj: nn.Linear
    proj_drop: nn.Dropout
    relative_position_index: Tensor   # a buffer

    def _qkv(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _core_args(self) -> dict[str, Tensor | float | None]:
        raise NotImplementedError

    def _attend(self, x: Tensor, shift: tuple[int, int], mask: Tensor | None) -> Tensor:
        """x (B, H, W, C) -> attention output before proj, (B, H, W, heads * head_dim)."""
        B, H, W, _ = x.shape
        q, k, v = self._qkv(x).view(B, H, W, 3, self.num_heads, -1).unbind(3)
        o = window_attention(q, k, v, self.window_size, shift, mask=mask, **self._core_args())
        return o.reshape(B, H, W, -1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """timm's signature: x (num_windows * B, N, C) already partitioned; mask (nW, N, N)."""
        B_, N, C = x.shape
        wh, ww = self.window_size
        if N != wh * ww:
            raise InputError(f"{type(self).__name__}: x has {N} tokens per window, expected {wh} x {ww}")
        o = self._attend(x.view(B_, wh, ww, C), (0, 0), mask)
        return self.proj_drop(self.proj(o.view(B_, N, -1)))

    def forward_spatial(self, x: Tensor, shift: int | Sequence[int] = 0) -> Tensor:
        """A block's whole (shifted) window attention on x (B, H, W, C) with H, W multiples
        of the window: qkv, the fused core with the shift, proj. Returns (B, H, W, C)."""
        B, H, W, C = x.shape
        wh, ww = self.window_size
        if H % wh or W % ww:
            raise InputError(f"forward_spatial: the map ({H}, {W}) must be a multiple of the window {self.window_size} "
                             "(pad it first, as Swin does before its qkv projection)")
        return self.proj_drop(self.proj(self._attend(x, _pair(shift), None)))


class WindowAttention(_FusedWindowAttention):
    """Swin V1 window attention (timm ``swin_transformer.WindowAttention``), fused."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, window_size: int | Sequence[int] = 7,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        _no_attn_drop(attn_drop)
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.window_size = _pair(window_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        self.num_heads = num_heads
        head_dim = head_dim or dim // num_heads
        attn_dim = head_dim * num_heads
        self.scale = head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1), num_heads, **dd))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size, device),
                             persistent=False)
        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(attn_dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _qkv(self, x: Tensor) -> Tensor:
        return self.qkv(x)

    def _get_rel_pos_bias(self) -> Tensor:
        N = self.window_area
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)

    def _core_args(self):
        return {"bias": self._get_rel_pos_bias(), "scale": self.scale}


class WindowAttentionV2(_FusedWindowAttention):
    """SwinV2 window attention (timm ``swin_transformer_v2.WindowAttention``), fused.

    In eval mode without autograd the continuous position bias (an MLP over the offset
    table) is computed once and kept until the MLP's weights change.
    """

    q_bias: nn.Parameter | None   # the three all set (qkv_bias) or all None
    k_bias: Tensor | None         # a buffer (zeros)
    v_bias: nn.Parameter | None
    relative_coords_table: Tensor   # a buffer

    def __init__(self, dim: int, window_size: int | Sequence[int], num_heads: int, qkv_bias: bool = True,
                 qkv_bias_separate: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 pretrained_window_size: int | Sequence[int] = (0, 0), device=None, dtype=None):
        super().__init__()
        _no_attn_drop(attn_drop)
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.window_size = _pair(window_size)
        self.pretrained_window_size = _pair(pretrained_window_size)
        self.num_heads = num_heads
        self.qkv_bias_separate = qkv_bias_separate
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0), **dd))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True, **dd), nn.ReLU(inplace=True),
                                     nn.Linear(512, num_heads, bias=False, **dd))
        self.qkv = nn.Linear(dim, dim * 3, bias=False, **dd)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim, **dd))
            self.register_buffer("k_bias", torch.zeros(dim, **dd), persistent=False)
            self.v_bias = nn.Parameter(torch.zeros(dim, **dd))
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.register_buffer("relative_coords_table", self._coords_table(device, dtype), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size, device),
                             persistent=False)
        self._bias_cache: tuple[tuple, Tensor] | None = None

    def _coords_table(self, device=None, dtype=None) -> Tensor:
        """Relative offsets in [-1, 1] x 8, log-spaced (SwinV2), (1, 2 wh - 1, 2 ww - 1, 2)."""
        wh, ww = self.window_size
        h = torch.arange(-(wh - 1), wh, device=device, dtype=torch.float32)
        w = torch.arange(-(ww - 1), ww, device=device, dtype=torch.float32)
        table = torch.stack(torch.meshgrid(h, w, indexing="ij")).permute(1, 2, 0).unsqueeze(0)
        ref = self.pretrained_window_size if self.pretrained_window_size[0] > 0 else self.window_size
        table[..., 0] /= max(ref[0] - 1, 1)
        table[..., 1] /= max(ref[1] - 1, 1)
        table = table * 8
        table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
        return table.to(dtype=dtype)

    def _qkv(self, x: Tensor) -> Tensor:
        if self.q_bias is None:
            return self.qkv(x)
        assert self.k_bias is not None and self.v_bias is not None   # set with q_bias
        qkv_bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        if self.qkv_bias_separate:
            return self.qkv(x) + qkv_bias
        return F.linear(x, self.qkv.weight, qkv_bias)

    def position_bias(self) -> Tensor:
        """16 sigmoid(MLP(offsets)), (heads, N, N)."""
        cacheable = not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        key = tuple((id(p), p._version) for p in self.cpb_mlp.parameters()) + (
            id(self.relative_coords_table), self.relative_coords_table._version)
        if cacheable and self._bias_cache is not None and self._bias_cache[0] == key:
            return self._bias_cache[1]
        N = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = 16 * torch.sigmoid(table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1))
        self._bias_cache = (key, bias) if cacheable else None
        return bias

    def _core_args(self):
        return {"logit_scale": self.logit_scale, "bias": self.position_bias()}
