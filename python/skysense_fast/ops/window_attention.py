"""Shifted-window attention (``torch.ops.skysense.window_attention``), forward and backward.

The core of Swin / SwinV2 blocks (SkySense's high-resolution branch is a SwinV2-H) as one
op that takes q, k, v in the spatial layout and does padding, cyclic shift, window
partition, scores, bias, shift mask, softmax, the product with v and the way back inside
the kernel. Pieces, as for every op of this package:

* schemas and CPU kernels (forward, backward): ``csrc/window_attention/`` (C++);
* CUDA: the Triton kernels of ``skysense_fast.triton.window_attention``, registered here;
* fake kernels (torch.compile / export) and the autograd formula: here;
* :func:`~skysense_fast.ops.window_attention_reference.window_attention_reference`: the
  specification, in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _lib
from ..backends import select
from ._dtypes import acc_dtype, same_device
from .window_attention_reference import window_attention_reference
from ..errors import InputError

__all__ = ["window_attention", "window_attention_reference"]

IMPLEMENTED = {"reference": ("cpu", "cuda"), "cpp": ("cpu",), "triton": ("cuda",)}
CUDA_ORDER = ("triton",)  # no CUDA C++ kernel: Triton's tl.dot covers these tile sizes well


def _pair(x: int | Sequence[int], name: str) -> list[int]:
    if isinstance(x, int):
        return [x, x]
    x = list(x)
    if len(x) != 2 or not all(isinstance(i, int) for i in x):
        raise InputError(f"window_attention: {name} must be an int or two ints, got {x}")
    return x


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
    win, sh = _pair(window, "window"), _pair(shift, "shift")
    backend = select("window_attention", q.device, IMPLEMENTED, CUDA_ORDER)
    if backend == "reference":
        if _lib.load_error() is None:  # the kernels' argument checks, for the same errors
            _lib.native().window_attention_prepare(q, k, v, win, sh, logit_scale, bias, mask, scale)
        return window_attention_reference(q, k, v, tuple(win), tuple(sh), logit_scale, bias, mask, scale)
    _lib.native()
    if backend == "triton" and q.device.type == "cpu":  # the Triton interpreter (tests)
        return _TritonOnCpu.apply(q, k, v, win, sh, logit_scale, bias, mask, scale)
    out, _ = torch.ops.skysense.window_attention(q, k, v, win, sh, logit_scale, bias, mask, scale)
    return out


def _triton_forward(q, k, v, window, shift, logit_scale, bias, mask, scale):
    from ..triton.window_attention import window_attention_forward  # lazy: TRITON_INTERPRET

    return window_attention_forward(*_lib.native().window_attention_prepare(q, k, v, window, shift, logit_scale,
                                                                            bias, mask, scale))


def _triton_backward(grad_out, q, k, v, out, lse, window, shift, logit_scale, bias, mask, scale):
    from ..triton.window_attention import window_attention_backward

    prepared = _lib.native().window_attention_prepare(q, k, v, window, shift, logit_scale, bias, mask, scale)
    return window_attention_backward(grad_out, out, lse, *prepared)


class _TritonOnCpu(torch.autograd.Function):
    """The Triton kernels on CPU tensors under TRITON_INTERPRET=1 (tests only): the CPU
    dispatch key belongs to the C++ kernels, so this path calls the launchers directly."""

    @staticmethod
    def forward(ctx, q, k, v, window, shift, logit_scale, bias, mask, scale):
        out, lse = _triton_forward(q, k, v, window, shift, logit_scale, bias, mask, scale)
        ctx.save_for_backward(q, k, v, out, lse, logit_scale, bias, mask)
        ctx.args = (window, shift, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, logit_scale, bias, mask = ctx.saved_tensors
        window, shift, scale = ctx.args
        dq, dk, dv, dls, db = _triton_backward(grad_out, q, k, v, out, lse, window, shift, logit_scale, bias,
                                               mask, scale)
        return (dq, dk, dv, None, None, _like(dls, logit_scale), _like(db, bias), None, None)


def _like(grad: Tensor, param: Tensor | None) -> Tensor | None:
    """A parameter's gradient from the kernels' (accumulation-dtype, flat) one."""
    if param is None or grad.numel() == 0:
        return None
    return grad.reshape(param.shape).to(param.dtype)


def _register() -> None:
    if _lib.load_error() is not None:
        return

    @torch.library.impl("skysense::window_attention", "CUDA")
    def _cuda(q, k, v, window, shift, logit_scale, bias, mask, scale):
        backend = select("window_attention", q.device, IMPLEMENTED, CUDA_ORDER)
        if backend == "reference":  # torch.ops called directly under use_backend("reference")
            out = window_attention_reference(q, k, v, tuple(window), tuple(shift), logit_scale, bias, mask, scale)
            return out, q.new_empty((0,), dtype=torch.float32)
        return _triton_forward(q, k, v, window, shift, logit_scale, bias, mask, scale)

    @torch.library.impl("skysense::window_attention_backward", "CUDA")
    def _cuda_backward(grad_out, q, k, v, out, lse, window, shift, logit_scale, bias, mask, scale):
        return _triton_backward(grad_out, q, k, v, out, lse, window, shift, logit_scale, bias, mask, scale)

    def _lse_shape(q, window):
        B, H, W, nh, _ = q.shape
        wh, ww = window
        nW = -(-H // wh) * -(-W // ww)
        return (B * nW, nh, wh * ww)

    @torch.library.register_fake("skysense::window_attention")
    def _fake(q, k, v, window, shift, logit_scale=None, bias=None, mask=None, scale=None):
        same_device("window_attention", "q", dict(q=q, k=k, v=v, logit_scale=logit_scale, bias=bias, mask=mask))
        if q.dim() != 5 or k.shape != q.shape or v.shape != q.shape:
            raise InputError("window_attention: q, k and v must have the same shape (B, H, W, heads, head_dim)")
        return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(_lse_shape(q, window),
                                                                                       dtype=acc_dtype(q.dtype))

    @torch.library.register_fake("skysense::window_attention_backward")
    def _fake_backward(grad_out, q, k, v, out, lse, window, shift, logit_scale, bias, mask, scale):
        same_device("window_attention_backward", "q", dict(grad_out=grad_out, q=q, k=k, v=v, out=out, lse=lse,
                                                           logit_scale=logit_scale, bias=bias, mask=mask))
        like = lambda: torch.empty_like(q, memory_format=torch.contiguous_format)  # noqa: E731
        nh, N = q.shape[3], window[0] * window[1]
        dls = q.new_empty((nh,) if logit_scale is not None else (0,), dtype=acc_dtype(q.dtype))
        db = q.new_empty((nh, N, N) if bias is not None else (0,), dtype=acc_dtype(q.dtype))
        return like(), like(), like(), dls, db

    def _setup(ctx, inputs, output):
        q, k, v, window, shift, logit_scale, bias, mask, scale = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse, logit_scale, bias, mask)
        ctx.args = (window, shift, scale)

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, logit_scale, bias, mask = ctx.saved_tensors
        window, shift, scale = ctx.args
        dq, dk, dv, dls, db = torch.ops.skysense.window_attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, window, shift, logit_scale, bias, mask, scale)
        return dq, dk, dv, None, None, _like(dls, logit_scale), _like(db, bias), None, None

    torch.library.register_autograd("skysense::window_attention", _backward, setup_context=_setup)


_register()
