"""skysense_fast: a fast, faithful SkySense (CVPR 2024) with fused kernels.

>>> import skysense_fast
>>> skysense_fast.backends()["cpp"]["available"]
True
"""

from __future__ import annotations

from . import nn, ops
from ._lib import ExtensionNotBuilt, build_info
from .backends import backends, use_backend
from .errors import InputError
from .nn import accelerate
from .ops import sinkhorn, window_attention
from .weights import from_pretrained, save_pretrained

__version__ = "0.1.0"
__all__ = ["ExtensionNotBuilt", "InputError", "accelerate", "backends", "build_info", "from_pretrained", "nn", "ops",
           "save_pretrained", "sinkhorn", "use_backend", "window_attention", "__version__"]
