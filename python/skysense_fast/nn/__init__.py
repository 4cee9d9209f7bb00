"""Drop-in ``torch.nn`` modules built on the fused ops."""

from .accelerate import AccelerateReport, accelerate
from .swin_block import Mlp, SwinTransformerBlock, SwinTransformerV2Block
from .temporal_fusion import MultimodalTemporalFusion, TemporalPositionEncoding
from .transformer import FFN, MultiheadSelfAttention, TransformerLayer
from .window_attention import WindowAttention, WindowAttentionV2

__all__ = ["AccelerateReport", "FFN", "Mlp", "MultiheadSelfAttention", "MultimodalTemporalFusion",
           "SwinTransformerBlock", "SwinTransformerV2Block", "TemporalPositionEncoding", "TransformerLayer",
           "WindowAttention", "WindowAttentionV2", "accelerate"]
