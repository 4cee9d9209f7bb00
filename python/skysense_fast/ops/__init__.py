"""Hot ops, one module each: reference (the specification), fake kernel, autograd and the
backend choice; kernels live in csrc/ (C++), kernels/ (CUDA C++) and triton/."""

from .sinkhorn import sinkhorn, sinkhorn_reference

__all__ = ["sinkhorn", "sinkhorn_reference"]
