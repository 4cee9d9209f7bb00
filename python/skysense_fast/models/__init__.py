"""SkySense's encoders (more of the assembly follows: see the model issue)."""

from .swinv2 import SwinV2Encoder
from .vit import UPHead, ViTEncoder

__all__ = ["SwinV2Encoder", "UPHead", "ViTEncoder"]
