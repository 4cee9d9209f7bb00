"""Multi-head attention over many short sequences (``torch.ops.skysense.temporal_attention``).

SkySense's fusion runs a transformer over every pixel's sequence of tokens (the HR token,
the Sentinel-2 and Sentinel-1 acquisitions, a class token): tens to hundreds of thousands of
sequences of ~31 tokens, past the 65,535-sequence launch limit of fused GPU attention and
poorly served by SDPA on CPUs. Pieces, as for every op of this package:

* schemas and CPU kernels (forward, backward): ``csrc/temporal_attention/`` (C++, on the
  tile math shared with window attention, ``csrc/attention_tile.h``);
* CUDA: ``skysense_fast.triton.temporal_attention``, registered here;
* fake kernels and the autograd formula: here; :func:`temporal_attention_reference`: the
  specification.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _lib
from ..backends import select
from ._dtypes import acc_dtype, same_device
from ..errors import InputError

__all__ = ["temporal_attention", "temporal_attention_qkv", "temporal_attention_reference"]

IMPLEMENTED = {"reference": ("cpu", "cuda"), "cpp": ("cpu",), "triton": ("cuda",)}
MAX_TOKENS = 256  # per sequence; the scores of a sequence stay in registers / L1
CUDA_ORDER = ("triton",)


def temporal_attention_reference(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                                 scale: float | None = None) -> Tensor:
    """softmax(q k^T * scale, keys where key_padding_mask is True excluded) v.

    Args:
        q, k, v: (S, heads, T, head_dim), SDPA's layout: S independent sequences of T tokens.
        key_padding_mask: (S, T) bool, True = ignore that key (nn.MultiheadAttention's
            convention). A sequence whose keys are all ignored has no defined attention: on
            the CPU that is an error; on CUDA, where checking would sync the host, the
            kernel returns NaN for it, as SDPA does. The fusion's class token is never
            masked, so it never happens there.
        scale: default head_dim ** -0.5.

    Returns:
        (S, heads, T, head_dim).
    """
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1) @ v


def temporal_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                       scale: float | None = None) -> Tensor:
    """Fused :func:`temporal_attention_reference`, differentiable in q, k, v.

    Any number of sequences; T <= 256. q, k, v may be any views with contiguous channels
    (e.g. slices of one (S, T, 3, heads, head_dim) projection, transposed). The result is an
    (S, heads, T, head_dim) tensor stored as (S, T, heads, head_dim), so
    ``out.transpose(1, 2).reshape(S, T, -1)`` for the output projection is free.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"temporal_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    backend = select("temporal_attention", q.device, IMPLEMENTED, CUDA_ORDER)
    if backend == "reference":
        if _lib.load_error() is None:  # the kernels' argument checks, for the same errors
            _lib.native().temporal_attention_prepare(q, k, v, key_padding_mask, scale)
        return temporal_attention_reference(q, k, v, key_padding_mask, scale)
    _lib.native()
    if backend == "triton" and q.device.type == "cpu":  # the Triton interpreter (tests)
        return _TritonOnCpu.apply(q, k, v, key_padding_mask, scale)
    return torch.ops.skysense.temporal_attention(q, k, v, key_padding_mask, scale)[0]


def _unpack(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise InputError(f"temporal_attention_qkv: qkv must have shape (S, T, 3, heads, head_dim), got {tuple(qkv.shape)}")
    return tuple(t.transpose(1, 2) for t in qkv.unbind(2))


def temporal_attention_qkv(qkv: Tensor, key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """:func:`temporal_attention` on one packed projection qkv (S, T, 3, heads, head_dim), the
    way a transformer layer computes it. Same result; the backward writes the projection's
    gradient in one buffer instead of three gradients and a stack copy."""
    if not isinstance(qkv, Tensor):
        raise TypeError(f"temporal_attention_qkv: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    backend = select("temporal_attention", qkv.device, IMPLEMENTED, CUDA_ORDER)
    if backend == "reference" or (backend == "triton" and qkv.device.type == "cpu"):
        return temporal_attention(*_unpack(qkv), key_padding_mask, scale)
    _lib.native()
    return torch.ops.skysense.temporal_attention_qkv(qkv, key_padding_mask, scale)[0]


def _triton_forward(q, k, v, key_padding_mask, scale):
    from ..triton.temporal_attention import temporal_attention_forward  # lazy: TRITON_INTERPRET

    return temporal_attention_forward(*_lib.native().temporal_attention_prepare(q, k, v, key_padding_mask, scale))


def _triton_backward(grad_out, q, k, v, out, lse, key_padding_mask, scale):
    from ..triton.temporal_attention import temporal_attention_backward

    qq, kk, vv, km, sc = _lib.native().temporal_attention_prepare(q, k, v, key_padding_mask, scale)
    return temporal_attention_backward(grad_out, out, lse, qq, kk, vv, km, sc)


class _TritonOnCpu(torch.autograd.Function):
    """The Triton kernels on CPU tensors under TRITON_INTERPRET=1 (tests only)."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, scale):
        out, lse = _triton_forward(q, k, v, key_padding_mask, scale)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        return (*_triton_backward(grad_out, q, k, v, out, lse, mask, ctx.scale), None, None)


def _register() -> None:
    if _lib.load_error() is not None:
        return

    @torch.library.impl("skysense::temporal_attention", "CUDA")
    def _cuda(q, k, v, key_padding_mask, scale):
        if select("temporal_attention", q.device, IMPLEMENTED, CUDA_ORDER) == "reference":
            out = temporal_attention_reference(q, k, v, key_padding_mask, scale)
            return _lib.native().temporal_attention_output_like(q).copy_(out), q.new_empty((0,), dtype=torch.float32)
        return _triton_forward(q, k, v, key_padding_mask, scale)

    @torch.library.impl("skysense::temporal_attention_backward", "CUDA")
    def _cuda_backward(grad_out, q, k, v, out, lse, key_padding_mask, scale):
        return _triton_backward(grad_out, q, k, v, out, lse, key_padding_mask, scale)

    @torch.library.impl("skysense::temporal_attention_qkv", "CUDA")
    def _cuda_qkv(qkv, key_padding_mask, scale):
        return _cuda(*_unpack(qkv), key_padding_mask, scale)

    @torch.library.impl("skysense::temporal_attention_qkv_backward", "CUDA")
    def _cuda_qkv_backward(grad_out, qkv, out, lse, key_padding_mask, scale):
        return torch.stack(_triton_backward(grad_out, *_unpack(qkv), out, lse, key_padding_mask, scale), 0).permute(
            1, 3, 0, 2, 4).contiguous()

    def _like(q):  # (S, heads, T, hd) stored as (S, T, heads, hd), as the kernels write it
        S, heads, T, hd = q.shape
        return q.new_empty((S, T, heads, hd)).permute(0, 2, 1, 3)

    @torch.library.register_fake("skysense::temporal_attention")
    def _fake(q, k, v, key_padding_mask=None, scale=None):
        same_device("temporal_attention", "q", dict(q=q, k=k, v=v, key_padding_mask=key_padding_mask))
        if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
            raise InputError("temporal_attention: q, k and v must have the same shape (S, heads, T, head_dim)")
        return _like(q), q.new_empty(q.shape[:3], dtype=acc_dtype(q.dtype))

    @torch.library.register_fake("skysense::temporal_attention_backward")
    def _fake_backward(grad_out, q, k, v, out, lse, key_padding_mask, scale):
        same_device("temporal_attention_backward", "q", dict(grad_out=grad_out, q=q, k=k, v=v, out=out, lse=lse,
                                                             key_padding_mask=key_padding_mask))
        return _like(q), _like(q), _like(q)

    @torch.library.register_fake("skysense::temporal_attention_qkv")
    def _fake_qkv(qkv, key_padding_mask=None, scale=None):
        same_device("temporal_attention_qkv", "qkv", dict(qkv=qkv, key_padding_mask=key_padding_mask))
        q = _unpack(qkv)[0]
        return _like(q), q.new_empty(q.shape[:3], dtype=acc_dtype(q.dtype))

    @torch.library.register_fake("skysense::temporal_attention_qkv_backward")
    def _fake_qkv_backward(grad_out, qkv, out, lse, key_padding_mask, scale):
        same_device("temporal_attention_qkv_backward", "qkv", dict(grad_out=grad_out, qkv=qkv, out=out, lse=lse,
                                                                   key_padding_mask=key_padding_mask))
        return torch.empty_like(qkv, memory_format=torch.contiguous_format)

    def _setup_qkv(ctx, inputs, output):
        qkv, key_padding_mask, scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(qkv, output[0], output[1], key_padding_mask)
        ctx.scale = scale

    def _backward_qkv(ctx, grad_out, grad_lse):
        qkv, out, lse, mask = ctx.saved_tensors
        return torch.ops.skysense.temporal_attention_qkv_backward(grad_out, qkv, out, lse, mask, ctx.scale), None, None

    torch.library.register_autograd("skysense::temporal_attention_qkv", _backward_qkv, setup_context=_setup_qkv)

    def _setup(ctx, inputs, output):
        q, k, v, key_padding_mask, scale = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.scale = scale

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = torch.ops.skysense.temporal_attention_backward(grad_out, q, k, v, out, lse, mask, ctx.scale)
        return dq, dk, dv, None, None

    torch.library.register_autograd("skysense::temporal_attention", _backward, setup_context=_setup)


_register()
