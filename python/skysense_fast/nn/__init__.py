"""Drop-in ``torch.nn`` modules built on the fused ops."""

from .accelerate import AccelerateReport, accelerate
from .swin_block import Mlp, SwinTransformerBlock, SwinTransformerV2Block
from .window_attention import WindowAttention, WindowAttentionV2

__all__ = ["AccelerateReport", "Mlp", "SwinTransformerBlock", "SwinTransformerV2Block", "WindowAttention",
           "WindowAttentionV2", "accelerate"]
