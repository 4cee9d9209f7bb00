"""Triton kernels, one module per op. Imported lazily by ``skysense_fast.ops`` so that
``TRITON_INTERPRET`` can be set before ``import triton``."""
