"""``accelerate(model)``: swap the fused window attention into timm Swin / SwinV2 models.

In place, weights kept: every timm ``WindowAttention`` becomes this package's drop-in module,
and every Swin block whose map is a multiple of its window runs its whole shifted-window
path (roll, partition, attention, reverse, roll back) as one fused op. Blocks on maps that
are not a multiple of the window keep timm's own roll/pad/partition around the fused module:
timm rolls before padding, the official SwinV2 pads before rolling, and only on whole windows
do the two agree.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from torch import nn

from .window_attention import WindowAttention, WindowAttentionV2

if TYPE_CHECKING:   # timm is optional (dev): only the models it converts need it
    from timm.models.swin_transformer import WindowAttention as TimmWindowAttention
    from timm.models.swin_transformer_v2 import WindowAttention as TimmWindowAttentionV2

_TIMM_V1 = "timm.models.swin_transformer"
_TIMM_V2 = "timm.models.swin_transformer_v2"


@dataclass
class AccelerateReport:
    attention: list[str] = field(default_factory=list)  # modules replaced by fused ones
    blocks: list[str] = field(default_factory=list)     # blocks whose window path is fused
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def __str__(self) -> str:
        lines = [f"fused window attention: {len(self.attention)} modules, {len(self.blocks)} blocks"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def _is(mod: nn.Module, module_path: str, cls: str) -> bool:
    return type(mod).__module__ == module_path and type(mod).__name__ == cls


def _convert(mod: nn.Module) -> nn.Module:
    """A timm WindowAttention (V1 or V2, as ``accelerate`` found it) as the fused module."""
    w = cast(nn.Linear, mod.qkv).weight
    dd = {"device": w.device, "dtype": w.dtype}
    new: WindowAttention | WindowAttentionV2
    if _is(mod, _TIMM_V2, "WindowAttention"):
        v2 = cast("TimmWindowAttentionV2", mod)
        new = WindowAttentionV2(v2.dim, v2.window_size, v2.num_heads, qkv_bias=v2.q_bias is not None,
                                qkv_bias_separate=v2.qkv_bias_separate, attn_drop=v2.attn_drop.p,
                                proj_drop=v2.proj_drop.p, pretrained_window_size=v2.pretrained_window_size, **dd)
    else:
        v1 = cast("TimmWindowAttention", mod)
        heads = v1.num_heads
        new = WindowAttention(v1.qkv.in_features, heads, head_dim=v1.qkv.out_features // 3 // heads,
                              window_size=v1.window_size, qkv_bias=v1.qkv.bias is not None,
                              attn_drop=v1.attn_drop.p, proj_drop=v1.proj_drop.p, **dd)
    new.load_state_dict(mod.state_dict(), strict=True)
    return new.train(mod.training)


def _fused_block_attn(self, x):
    """Replaces a timm Swin block's ``_attn``: one fused op on whole-window maps."""
    _, H, W, _ = x.shape
    if H % self.window_size[0] or W % self.window_size[1]:
        return type(self)._attn(self, x)
    return self.attn.forward_spatial(x, self.shift_size)


def accelerate(model: nn.Module) -> AccelerateReport:
    """Swap fused window attention into ``model`` in place; returns what was swapped."""
    report = AccelerateReport()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not (_is(child, _TIMM_V1, "WindowAttention") or _is(child, _TIMM_V2, "WindowAttention")):
                continue
            if child.attn_drop.p > 0:
                report.skipped.append((full, f"attn_drop={child.attn_drop.p} (the fused kernel has no attention "
                                             "dropout)"))
                continue
            setattr(parent, name, _convert(child))
            report.attention.append(full)
    for name, mod in model.named_modules():
        if _is(mod, _TIMM_V1, "SwinTransformerBlock") or _is(mod, _TIMM_V2, "SwinTransformerV2Block"):
            if isinstance(mod.attn, (WindowAttention, WindowAttentionV2)):
                mod._attn = types.MethodType(_fused_block_attn, mod)
                report.blocks.append(name)
    return report
