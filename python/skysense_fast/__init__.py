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

__version__ = "0.1.0"
__all__ = ["ExtensionNotBuilt", "InputError", "accelerate", "backends", "build_info", "nn", "ops", "sinkhorn",
           "use_backend",
           "window_attention", "__version__"]
