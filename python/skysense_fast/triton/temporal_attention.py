"""Triton kernels for temporal attention (CUDA; CPU under TRITON_INTERPRET=1).

One program per (sequence, head): the T x T scores stay in registers (T <= 256), q, k, v are
read by stride from any layout with contiguous channels, and the output is written as
(S, T, heads, head_dim). The grid's first dimension holds the sequences, so there is no
65,535 limit. The backward recomputes the probabilities from the forward's log-sum-exp.

Call these with arguments checked by ``_C.temporal_attention_prepare``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tile(X, s, h, st0, st1, st2, T, hd, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    offs = s.to(tl.int64) * st0 + h * st1 + t[:, None] * st2 + d[None, :]
    return tl.load(X + offs, mask=(t[:, None] < T) & (d[None, :] < hd), other=0.0)


@triton.jit
def _load_qkv(Q, K, V, T, hd, sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2,
              BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (sequence, head) and its q, k, v tiles."""
    s = tl.program_id(0)
    h = tl.program_id(1)
    return (s, h, _tile(Q, s, h, sq0, sq1, sq2, T, hd, BLOCK_T, BLOCK_D),
            _tile(K, s, h, sk0, sk1, sk2, T, hd, BLOCK_T, BLOCK_D), _tile(V, s, h, sv0, sv1, sv2, T, hd, BLOCK_T, BLOCK_D))


@triton.jit
def _probs(q, k, keymask, s, T, scale, HAS_MASK: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr):
    if IEEE:
        sc = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    else:
        sc = tl.dot(q, tl.trans(k)) * scale
    t = tl.arange(0, BLOCK_T)
    if HAS_MASK:
        sc += tl.load(keymask + s.to(tl.int64) * T + t, mask=t < T, other=0.0)[None, :]
    return tl.where(t[None, :] < T, sc, float("-inf"))


@triton.jit
def _fwd(Q, K, V, Out, Lse, keymask, T, heads, hd, scale,
         sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2,
         HAS_MASK: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    s, h, q, k, v = _load_qkv(Q, K, V, T, hd, sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, BLOCK_T, BLOCK_D)
    sc = _probs(q, k, keymask, s, T, scale, HAS_MASK, IEEE, BLOCK_T)
    mx = tl.max(sc, 1)
    p = tl.exp(sc - mx[:, None])
    den = tl.sum(p, 1)
    p = p / den[:, None]
    if IEEE:
        o = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        o = tl.dot(p.to(v.dtype), v)
    t = tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_D)
    row = (s.to(tl.int64) * T + t) * heads + h
    m2 = (t[:, None] < T) & (d[None, :] < hd)
    tl.store(Out + row[:, None] * hd + d[None, :], o.to(Out.dtype.element_ty), mask=m2)
    tl.store(Lse + (s.to(tl.int64) * heads + h) * T + t, mx + tl.log(den), mask=t < T)


@triton.jit
def _bwd(Q, K, V, Out, dOut, Lse, keymask, dQ, dK, dV, T, heads, hd, scale,
         sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, so0, so1, so2, sg0, sg1, sg2,
         HAS_MASK: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    s, h, q, k, v = _load_qkv(Q, K, V, T, hd, sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, BLOCK_T, BLOCK_D)
    o = _tile(Out, s, h, so0, so1, so2, T, hd, BLOCK_T, BLOCK_D).to(tl.float32)
    do = _tile(dOut, s, h, sg0, sg1, sg2, T, hd, BLOCK_T, BLOCK_D)
    t = tl.arange(0, BLOCK_T)
    sc = _probs(q, k, keymask, s, T, scale, HAS_MASK, IEEE, BLOCK_T)
    lse = tl.load(Lse + (s.to(tl.int64) * heads + h) * T + t, mask=t < T, other=0.0)
    p = tl.exp(sc - lse[:, None])
    D = tl.sum(do.to(tl.float32) * o, 1)
    if IEEE:
        dv = tl.dot(tl.trans(p.to(v.dtype)), do, input_precision="ieee")
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    else:
        dv = tl.dot(tl.trans(p.to(v.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
    ds = (p * (dp - D[:, None]) * scale).to(q.dtype)
    if IEEE:
        dq = tl.dot(ds, k, input_precision="ieee")
        dk = tl.dot(tl.trans(ds), q, input_precision="ieee")
    else:
        dq = tl.dot(ds, k)
        dk = tl.dot(tl.trans(ds), q)
    d = tl.arange(0, BLOCK_D)
    row = (s.to(tl.int64) * T + t) * heads + h
    offs = row[:, None] * hd + d[None, :]
    m2 = (t[:, None] < T) & (d[None, :] < hd)
    tl.store(dQ + offs, dq.to(dQ.dtype.element_ty), mask=m2)
    tl.store(dK + offs, dk.to(dK.dtype.element_ty), mask=m2)
    tl.store(dV + offs, dv.to(dV.dtype.element_ty), mask=m2)


def _meta(q, key_mask):
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"temporal_attention (triton): q must be float32, bfloat16 or float16, got {q.dtype}")
    S, heads, T, hd = q.shape
    meta = dict(HAS_MASK=key_mask is not None, IEEE=q.dtype == torch.float32,
                BLOCK_T=max(16, triton.next_power_of_2(T)), BLOCK_D=max(16, triton.next_power_of_2(hd)))
    return meta, (S, heads), (key_mask if key_mask is not None else q.new_zeros(1, dtype=torch.float32))


def _strides(*ts):
    return tuple(x for t in ts for x in t.stride()[:3])


def _output_like(q):  # (S, heads, T, hd) stored as (S, T, heads, hd)
    S, heads, T, hd = q.shape
    return q.new_empty((S, T, heads, hd)).permute(0, 2, 1, 3)


def temporal_attention_forward(q, k, v, key_mask, scale):
    """(out, lse) for prepared arguments; lse (S, heads, T) float32."""
    meta, grid, km = _meta(q, key_mask)
    S, heads, T, hd = q.shape
    out = _output_like(q)
    lse = q.new_empty((S, heads, T), dtype=torch.float32)
    _fwd[grid](q, k, v, out, lse, km, T, heads, hd, float(scale), *_strides(q, k, v), **meta)
    return out, lse


def temporal_attention_backward(grad_out, out, lse, q, k, v, key_mask, scale):
    meta, grid, km = _meta(q, key_mask)
    S, heads, T, hd = q.shape
    grad_out = grad_out.to(q.dtype)
    grad_out = grad_out if grad_out.stride(3) == 1 else grad_out.contiguous()
    out = out.to(q.dtype)
    dq, dk, dv = _output_like(q), _output_like(q), _output_like(q)
    _bwd[grid](q, k, v, out, grad_out, lse.float().contiguous(), km, dq, dk, dv, T, heads, hd, float(scale),
               *_strides(q, k, v, out, grad_out), **meta)
    return dq, dk, dv
