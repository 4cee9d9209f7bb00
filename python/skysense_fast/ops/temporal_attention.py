"""Multi-head attention over many short sequences (``torch.ops.skysense.temporal_attention``).

SkySense's fusion runs a transformer over every pixel's sequence of tokens (the HR token,
the Sentinel-2 and Sentinel-1 acquisitions, a class token): tens to hundreds of thousands of
sequences of ~31 tokens, past the 65,535-sequence launch limit of fused GPU attention and
poorly served by SDPA on CPUs. Pieces, as for every op of this package:

* schemas and CPU kernels (forward, backward): ``csrc/temporal_attention/`` (C++, on the
  tile math shared with window attention, ``csrc/attention_tile.h``);
* CUDA: ``skysense_fast.triton.temporal_attention``, registered here;
* fake kernels and backends: here, the rest derived from the schema (:mod:`.fused_op`);
  :func:`temporal_attention_reference`: the specification.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _lib
from ..errors import InputError
from ._dtypes import acc_dtype, same_device
from .fused_op import Backend, FusedOp, Inputs, grid_limits

__all__ = ["temporal_attention", "temporal_attention_qkv", "temporal_attention_reference"]

# Sequences up to this length are what the fused kernels are for (the CPU kernel's limit,
# build_info()["cpu_max_tokens"]); layers hand longer ones (a ViT's 257 tokens) to SDPA.
MAX_TOKENS = 256


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


def _unpack(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(qkv, Tensor):
        raise TypeError(f"temporal_attention_qkv: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise InputError("temporal_attention_qkv: qkv must have shape (S, T, 3, heads, head_dim), got "
                         f"{tuple(qkv.shape)}")
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))   # three: shape[2] == 3 checked above
    return q, k, v


def _qkv(a: Inputs) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v of either op's arguments."""
    return _unpack(a.qkv) if "qkv" in a else (a.q, a.k, a.v)


def _prepare(a: Inputs) -> tuple:
    return _lib.native().temporal_attention_prepare(*_qkv(a), a.key_padding_mask, a.scale)


def _cpp_limits(a: Inputs) -> str | None:
    T, most = _qkv(a)[0].shape[2], _lib.build_info()["cpu_max_tokens"]
    return f"T = {T} tokens is over {most} (the CPU kernel keeps a sequence's scores in L1)" if T > most else None


def _triton_limits(a: Inputs) -> str | None:
    q = _qkv(a)[0]
    if q.dtype == torch.float64:
        return "float64 is not supported (float32, bfloat16, float16)"
    if q.shape[-1] > 128:
        return f"head_dim {q.shape[-1]} is over 128 (the compile gate's largest)"
    if q.shape[2] > MAX_TOKENS:
        return f"T = {q.shape[2]} tokens is over {MAX_TOKENS} (the compile gate's largest)"
    return grid_limits(("heads", q.shape[1], 65535))


def _triton_forward(a: Inputs) -> tuple[Tensor, Tensor]:
    from ..triton.temporal_attention import temporal_attention_forward  # lazy: TRITON_INTERPRET

    return temporal_attention_forward(*_prepare(a))


def _triton_backward(a: Inputs) -> tuple[Tensor, Tensor, Tensor]:
    from ..triton.temporal_attention import temporal_attention_backward

    return temporal_attention_backward(a.grad_out, a.out, a.lse, *_prepare(a))


def _triton_backward_qkv(a: Inputs) -> Tensor:  # the packed projection's gradient
    return torch.stack(_triton_backward(a), 0).permute(1, 3, 0, 2, 4).contiguous()


def _like(q: Tensor) -> Tensor:  # (S, heads, T, hd) stored as (S, T, heads, hd), as the kernels write it
    S, heads, T, hd = q.shape
    return q.new_empty((S, T, heads, hd)).permute(0, 2, 1, 3)


def _fake(a: Inputs) -> tuple[Tensor, Tensor]:
    same_device("temporal_attention", "qkv" if "qkv" in a else "q", a)
    q, k, v = _qkv(a)
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise InputError("temporal_attention: q, k and v must have the same shape (S, heads, T, head_dim)")
    return _like(q), q.new_empty(q.shape[:3], dtype=acc_dtype(q.dtype))


def _fake_backward(a: Inputs) -> tuple[Tensor, Tensor, Tensor]:
    same_device("temporal_attention_backward", "q", a)
    return _like(a.q), _like(a.q), _like(a.q)


def _fake_backward_qkv(a: Inputs) -> Tensor:
    same_device("temporal_attention_qkv_backward", "qkv", a)
    return torch.empty_like(a.qkv, memory_format=torch.contiguous_format)


def _op(name: str, reference, triton_backward, fake_backward) -> FusedOp:
    return FusedOp(name, reference=reference, fake=_fake, fake_backward=fake_backward, check=_prepare,
                   gpu_order=("triton",),
                   backends=(Backend("cpp", ("cpu",), _cpp_limits),
                             Backend("triton", ("cuda",), _triton_limits, _triton_forward, triton_backward)))


TEMPORAL = _op("temporal_attention", temporal_attention_reference, _triton_backward, _fake_backward)
# The same on one packed projection: its backward writes the projection's gradient in one
# buffer instead of three gradients and a stack copy.
TEMPORAL_QKV = _op("temporal_attention_qkv",
                   lambda qkv, key_padding_mask=None, scale=None: temporal_attention_reference(
                       *_unpack(qkv), key_padding_mask, scale),
                   _triton_backward_qkv, _fake_backward_qkv)


def _first(out: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


@TEMPORAL.entry
def temporal_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                       scale: float | None = None) -> Tensor:
    """Fused :func:`temporal_attention_reference`, differentiable in q, k, v.

    Any number of sequences; T <= 256 on the CPU kernel (longer ones run the reference).
    q, k, v may be any views with contiguous channels (e.g. slices of one (S, T, 3, heads,
    head_dim) projection, transposed). The result is an (S, heads, T, head_dim) tensor
    stored as (S, T, heads, head_dim), so ``out.transpose(1, 2).reshape(S, T, -1)`` for the
    output projection is free.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"temporal_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    return _first(TEMPORAL.call(locals()))


@TEMPORAL_QKV.entry
def temporal_attention_qkv(qkv: Tensor, key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """:func:`temporal_attention` on one packed projection qkv (S, T, 3, heads, head_dim), the
    way a transformer layer computes it. Same result; the backward writes the projection's
    gradient in one buffer instead of three gradients and a stack copy."""
    _unpack(qkv)
    return _first(TEMPORAL_QKV.call(locals()))
