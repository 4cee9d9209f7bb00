"""Small helpers the op modules share: accumulation dtype, device agreement."""

from __future__ import annotations

import torch

from ..errors import InputError


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulation dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def same_device(op: str, anchor: str, tensors: dict) -> None:
    """Raises unless every given tensor is on the anchor's device. Called by the fake (meta)
    kernels: the dispatcher sends a call with one meta tensor among CPU tensors to the fake
    kernel, which would otherwise return uninitialised CPU memory as the result."""
    dev = tensors[anchor].device
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != dev:
            raise InputError(f"{op}: {name} must be on {dev} like {anchor}, got {t.device}")
