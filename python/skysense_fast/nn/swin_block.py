"""Swin / SwinV2 transformer blocks on the fused window attention.

:class:`SwinTransformerBlock` and :class:`SwinTransformerV2Block` take timm's constructor
arguments and parameter names (``norm1``, ``attn.*``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so
timm weights load unchanged, and run a block's whole shifted-window path as one op.

Maps that are not a multiple of the window are padded before the qkv projection and then
rolled, as the official SwinV2 (and SkySense's HR encoder) does; timm rolls first and pads
after, which agrees only on whole windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .window_attention import WindowAttention, WindowAttentionV2, _pair


class Mlp(nn.Module):
    """fc1 -> act -> fc2 (timm's ``Mlp`` parameter names)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: Callable[[], nn.Module] = nn.GELU,
                 drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, device=device, dtype=dtype)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features, device=device, dtype=dtype)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def _act(act_layer) -> Callable[[], nn.Module]:
    if isinstance(act_layer, str):
        if act_layer.lower() != "gelu":
            raise InputError(f"act_layer {act_layer!r}: only 'gelu' (or an nn.Module class) is supported")
        return nn.GELU
    return act_layer


class _SwinBlock(nn.Module):
    attn: WindowAttention | WindowAttentionV2
    input_resolution: tuple[int, int]
    window_size: tuple[int, int]
    shift_size: tuple[int, int]

    def _window_shift(self, window_size, shift_size,
                      always_partition: bool) -> tuple[tuple[int, int], tuple[int, int]]:
        """timm's rule: a window larger than the map shrinks to it, and then nothing shifts."""
        window, shift = _pair(window_size), _pair(shift_size)
        if always_partition:
            return window, shift
        window = _pair([min(r, w) for r, w in zip(self.input_resolution, window, strict=True)])
        shift = _pair([0 if r <= w else s for r, w, s in zip(self.input_resolution, window, shift, strict=True)])
        return window, shift

    def _attn(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C): pad to whole windows, fused shifted-window attention, crop."""
        _, H, W, _ = x.shape
        ph, pw = (-H) % self.window_size[0], (-W) % self.window_size[1]
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        y = self.attn.forward_spatial(x, self.shift_size)
        return y[:, :H, :W].contiguous() if (ph or pw) else y


class SwinTransformerV2Block(_SwinBlock):
    """SwinV2 block (res-post-norm): x + norm1(attn(x)), then x + norm2(mlp(x))."""

    def __init__(self, dim: int, input_resolution: int | Sequence[int], num_heads: int,
                 window_size: int | Sequence[int] = 7, shift_size: int | Sequence[int] = 0,
                 always_partition: bool = False, dynamic_mask: bool = False, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer="gelu", norm_layer: type[nn.Module] = nn.LayerNorm,
                 pretrained_window_size: int | Sequence[int] = 0, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.num_heads = num_heads
        self.window_size, self.shift_size = self._window_shift(window_size, shift_size, always_partition)
        self.mlp_ratio = mlp_ratio
        self.attn = WindowAttentionV2(dim, self.window_size, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                      proj_drop=proj_drop, pretrained_window_size=_pair(pretrained_window_size), **dd)
        self.norm1 = norm_layer(dim, **dd)
        self.drop_path1 = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), _act(act_layer), proj_drop, **dd)
        self.norm2 = norm_layer(dim, **dd)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.norm1(self._attn(x)))
        return x + self.drop_path2(self.norm2(self.mlp(x)))


class SwinTransformerBlock(_SwinBlock):
    """Swin V1 block (pre-norm): x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, input_resolution: int | Sequence[int], num_heads: int = 4,
                 head_dim: int | None = None, window_size: int | Sequence[int] = 7, shift_size: int = 0,
                 always_partition: bool = False, dynamic_mask: bool = False, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, norm_layer: type[nn.Module] = nn.LayerNorm, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.dim = dim
        self.input_resolution = _pair(input_resolution)
        self.num_heads = num_heads
        self.window_size, self.shift_size = self._window_shift(window_size, shift_size, always_partition)
        self.mlp_ratio = mlp_ratio
        self.norm1 = norm_layer(dim, **dd)
        self.attn = WindowAttention(dim, num_heads, head_dim=head_dim, window_size=self.window_size,
                                    qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), _act(act_layer), proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


__all__ = ["DropPath", "Mlp", "SwinTransformerBlock", "SwinTransformerV2Block"]
