"""Drop-in ``torch.nn`` modules built on the fused ops."""

from .accelerate import AccelerateReport, accelerate
from .window_attention import WindowAttention, WindowAttentionV2

__all__ = ["AccelerateReport", "WindowAttention", "WindowAttentionV2", "accelerate"]
