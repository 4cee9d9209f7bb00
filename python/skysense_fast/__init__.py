"""skysense_fast: a fast, faithful SkySense (CVPR 2024) with fused kernels.

>>> import skysense_fast
>>> skysense_fast.backends()["cpp"]["available"]
True
"""

from __future__ import annotations

from . import ops
from ._lib import ExtensionNotBuilt, build_info
from .backends import backends, use_backend
from .ops import sinkhorn

__version__ = "0.1.0"
__all__ = ["ExtensionNotBuilt", "backends", "build_info", "ops", "sinkhorn", "use_backend", "__version__"]
