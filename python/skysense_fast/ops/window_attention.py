"""Shifted-window attention (``torch.ops.skysense.window_attention``), forward and backward.

The core of Swin / SwinV2 blocks (SkySense's high-resolution branch is a SwinV2-H) as one
op that takes q, k, v in the spatial layout and does padding, cyclic shift, window
partition, scores, bias, shift mask, softmax, the product with v and the way back inside
the kernel. Pieces, as for every op of this package:

* schemas and CPU kernels (forward, backward): ``csrc/window_attention/`` (C++);
* CUDA: the Triton kernels of ``skysense_fast.triton.window_attention``, registered here;
* fake kernels (torch.compile / export), backends and their limits: here; the autograd
  formula and the registrations are derived from the schema (:mod:`.fused_op`);
* :func:`~skysense_fast.ops.window_attention_reference.window_attention_reference`: the
  specification, in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _lib
from ..errors import InputError
from ._dtypes import acc_dtype, same_device
from .fused_op import Backend, FusedOp, Inputs, grid_limits
from .window_attention_reference import window_attention_reference

__all__ = ["window_attention", "window_attention_reference"]


def _pair(x: int | Sequence[int], name: str) -> list[int]:
    if isinstance(x, int):
        return [x, x]
    x = list(x)
    if len(x) != 2 or not all(isinstance(i, int) for i in x):
        raise InputError(f"window_attention: {name} must be an int or two ints, got {x}")
    return x


def _prepare(a: Inputs) -> tuple:
    return _lib.native().window_attention_prepare(*WINDOW.forward_args(a).values())


def _cpp_limits(a: Inputs) -> str | None:
    most = _lib.build_info()["cpu_max_window"]
    if max(a.window) > most:
        return f"window {tuple(a.window)} is over {most} per side (the CPU kernel keeps a window's scores in L1)"
    return None


def _triton_limits(a: Inputs) -> str | None:
    if a.q.dtype == torch.float64:
        return "float64 is not supported (float32, bfloat16, float16)"
    if a.q.shape[-1] > 128:
        return f"head_dim {a.q.shape[-1]} is over 128 (the compile gate's largest)"
    if a.window[0] * a.window[1] > 256:
        return f"window {tuple(a.window)} has over 256 tokens (the compile gate's largest: 16 x 16)"
    return grid_limits(("heads", a.q.shape[3], 65535))


def _triton_forward(a: Inputs) -> tuple[Tensor, Tensor]:
    from ..triton.window_attention import window_attention_forward  # lazy: TRITON_INTERPRET

    return window_attention_forward(*_prepare(a))


def _triton_backward(a: Inputs) -> tuple[Tensor, ...]:
    from ..triton.window_attention import window_attention_backward

    return window_attention_backward(a.grad_out, a.out, a.lse, *_prepare(a))


def _fake(a: Inputs) -> tuple[Tensor, Tensor]:
    same_device("window_attention", "q", a)
    q = a.q
    if q.dim() != 5 or a.k.shape != q.shape or a.v.shape != q.shape:
        raise InputError("window_attention: q, k and v must have the same shape (B, H, W, heads, head_dim)")
    B, H, W, heads, _ = q.shape
    (wh, ww) = a.window
    windows = B * -(-H // wh) * -(-W // ww)
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((windows, heads, wh * ww), dtype=acc_dtype(q.dtype)))


def _fake_backward(a: Inputs) -> tuple[Tensor, ...]:
    same_device("window_attention_backward", "q", a)
    q, acc = a.q, acc_dtype(a.q.dtype)
    heads, N = q.shape[3], a.window[0] * a.window[1]
    like = lambda: torch.empty_like(q, memory_format=torch.contiguous_format)  # noqa: E731
    dls = q.new_empty((heads,) if a.logit_scale is not None else (0,), dtype=acc)
    db = q.new_empty((heads, N, N) if a.bias is not None else (0,), dtype=acc)
    return like(), like(), like(), dls, db


WINDOW = FusedOp(
    "window_attention", reference=window_attention_reference, fake=_fake, fake_backward=_fake_backward,
    check=_prepare, gpu_order=("triton",),  # no CUDA C++ kernel: Triton's tl.dot covers these tiles well
    backends=(Backend("cpp", ("cpu",), _cpp_limits),
              Backend("triton", ("cuda",), _triton_limits, _triton_forward, _triton_backward)))


@WINDOW.entry
def window_attention(q: Tensor, k: Tensor, v: Tensor, window: int | Sequence[int],
                     shift: int | Sequence[int] = 0, *, logit_scale: Tensor | None = None,
                     bias: Tensor | None = None, mask: Tensor | None = None,
                     scale: float | None = None) -> Tensor:
    """Multi-head attention inside (shifted) windows, fused.

    Same arguments and semantics as
    :func:`~skysense_fast.ops.window_attention_reference.window_attention_reference`
    (q, k, v of shape (B, H, W, heads, head_dim); ``logit_scale`` selects SwinV2 cosine
    attention; ``bias`` (heads, N, N); ``mask`` (M, N, N)). Differentiable in q, k, v,
    logit_scale and bias (mask is a constant). Returns (B, H, W, heads, head_dim).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"window_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    out = WINDOW.call(locals(), window=_pair(window, "window"), shift=_pair(shift, "shift"))
    return out[0] if isinstance(out, tuple) else out
