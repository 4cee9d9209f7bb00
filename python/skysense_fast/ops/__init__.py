"""Hot ops, one module each: reference (the specification), fake kernel, autograd and the
backend choice; kernels live in csrc/ (C++), kernels/ (CUDA C++) and triton/."""

from .fusion_tokens import fusion_tokens, fusion_tokens_reference
from .sinkhorn import sinkhorn, sinkhorn_reference
from .temporal_attention import temporal_attention, temporal_attention_qkv, temporal_attention_reference
from .window_attention import window_attention, window_attention_reference

__all__ = ["fusion_tokens", "fusion_tokens_reference", "sinkhorn", "sinkhorn_reference", "temporal_attention",
           "temporal_attention_qkv", "temporal_attention_reference", "window_attention", "window_attention_reference"]
