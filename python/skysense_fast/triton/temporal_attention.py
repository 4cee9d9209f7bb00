"""Triton kernels for temporal attention (CUDA; CPU under TRITON_INTERPRET=1).

One program per (sequence, head, block of queries), walking the key blocks with an online
softmax (``attention_tile``), so sequences up to 256 tokens run in 64-wide tiles. q, k, v are
read by stride from any layout with contiguous channels (views of one projection in place);
the output is written as (S, T, heads, head_dim). Sequences sit on the grid's first
dimension, so there is no 65,535 limit.

Keys that ``key_padding_mask`` ignores are dropped from the scores and their k / v read as
zero, so a NaN in an ignored key stays out of the result, as in the reference. A sequence
with no valid key gets NaN (no host-side check on CUDA: SDPA's convention).

Backward: dq per (sequence, head, query block), which also writes delta = rowsum(dO * O);
dk and dv per (sequence, head, key block). Call the launchers with arguments checked by
``_C.temporal_attention_prepare``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InputError
from .attention_tile import dot, grad_scores, load_rows, softmax_step, store_rows
from .launch import Launch, run


@triton.jit
def _block(s, h, t0, st0, st1, st2, T, BLOCK: tl.constexpr):
    """Tokens t0 .. t0 + BLOCK of sequence s: (t, in range, element offsets of their rows)."""
    t = t0 + tl.arange(0, BLOCK)
    return t, t < T, tl.cast(s, tl.int64) * st0 + h * st1 + t.to(tl.int64) * st2


@triton.jit
def _key_valid(KeyMask, s, tn, T, HAS_MASK: tl.constexpr):
    ok = tn < T
    if HAS_MASK:
        ok &= tl.load(KeyMask + tl.cast(s, tl.int64) * T + tn, mask=ok, other=1) == 0
    return ok


@triton.jit
def _scores(q, k, kvalid, scale, IEEE: tl.constexpr):
    return tl.where(kvalid[None, :], dot(q, tl.trans(k), IEEE) * scale, float("-inf"))


@triton.jit
def _fwd(Q, K, V, Out, Lse, KeyMask, T, hd, scale,
         sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, so0, so1, so2,
         HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    tm, inm, rq = _block(s, h, tl.program_id(2) * BLOCK_M, sq0, sq1, sq2, T, BLOCK_M)
    q = load_rows(Q, rq, inm, hd, BLOCK_D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, T, BLOCK_N):
        tn, inn, rk = _block(s, h, j0, sk0, sk1, sk2, T, BLOCK_N)
        tv, inv, rv = _block(s, h, j0, sv0, sv1, sv2, T, BLOCK_N)
        ok = _key_valid(KeyMask, s, tn, T, HAS_MASK)
        k = load_rows(K, rk, ok, hd, BLOCK_D)
        v = load_rows(V, rv, ok, hd, BLOCK_D)
        m_i, l_i, acc = softmax_step(_scores(q, k, ok, scale, IEEE), m_i, l_i, acc, v, IEEE)
    to, ino, ro = _block(s, h, tl.program_id(2) * BLOCK_M, so0, so1, so2, T, BLOCK_M)
    store_rows(Out, ro, inm, hd, acc / l_i[:, None], BLOCK_D)
    tl.store(Lse + (tl.cast(s, tl.int64) * heads + h) * T + tm, m_i + tl.log(l_i), mask=inm)


@triton.jit
def _bwd_dq(Q, K, V, Out, dOut, Lse, Delta, KeyMask, dQ, T, hd, scale,
            sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, so0, so1, so2, sg0, sg1, sg2, sd0, sd1, sd2,
            HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    i0 = tl.program_id(2) * BLOCK_M
    tm, inm, rq = _block(s, h, i0, sq0, sq1, sq2, T, BLOCK_M)
    q = load_rows(Q, rq, inm, hd, BLOCK_D)
    do = load_rows(dOut, _block(s, h, i0, sg0, sg1, sg2, T, BLOCK_M)[2], inm, hd, BLOCK_D).to(q.dtype)
    o = load_rows(Out, _block(s, h, i0, so0, so1, so2, T, BLOCK_M)[2], inm, hd, BLOCK_D).to(tl.float32)
    delta = tl.sum(do.to(tl.float32) * o, 1)
    row = (tl.cast(s, tl.int64) * heads + h) * T + tm
    tl.store(Delta + row, delta, mask=inm)
    lse = tl.load(Lse + row, mask=inm, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, T, BLOCK_N):
        tn, inn, rk = _block(s, h, j0, sk0, sk1, sk2, T, BLOCK_N)
        ok = _key_valid(KeyMask, s, tn, T, HAS_MASK)
        k = load_rows(K, rk, ok, hd, BLOCK_D)
        v = load_rows(V, _block(s, h, j0, sv0, sv1, sv2, T, BLOCK_N)[2], ok, hd, BLOCK_D)
        p_unused, ds = grad_scores(_scores(q, k, ok, scale, IEEE), lse, do, v, delta, IEEE)
        dq += dot((ds * scale).to(q.dtype), k, IEEE)
    store_rows(dQ, _block(s, h, i0, sd0, sd1, sd2, T, BLOCK_M)[2], inm, hd, dq, BLOCK_D)


@triton.jit
def _bwd_dkdv(Q, K, V, dOut, Lse, Delta, KeyMask, dK, dV, T, hd, scale,
              sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, sg0, sg1, sg2, sd0, sd1, sd2,
              HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    j0 = tl.program_id(2) * BLOCK_N
    tn, inn, rk = _block(s, h, j0, sk0, sk1, sk2, T, BLOCK_N)
    ok = _key_valid(KeyMask, s, tn, T, HAS_MASK)
    k = load_rows(K, rk, ok, hd, BLOCK_D)
    v = load_rows(V, _block(s, h, j0, sv0, sv1, sv2, T, BLOCK_N)[2], ok, hd, BLOCK_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for i0 in range(0, T, BLOCK_M):
        tm, inm, rq = _block(s, h, i0, sq0, sq1, sq2, T, BLOCK_M)
        q = load_rows(Q, rq, inm, hd, BLOCK_D)
        do = load_rows(dOut, _block(s, h, i0, sg0, sg1, sg2, T, BLOCK_M)[2], inm, hd, BLOCK_D).to(q.dtype)
        row = (tl.cast(s, tl.int64) * heads + h) * T + tm
        lse = tl.load(Lse + row, mask=inm, other=0.0)
        delta = tl.load(Delta + row, mask=inm, other=0.0)
        # rows past T read dO = 0 and delta = 0: they add nothing
        p, ds = grad_scores(_scores(q, k, ok, scale, IEEE), lse, do, v, delta, IEEE)
        dv += dot(tl.trans(p.to(q.dtype)), do, IEEE)
        dk += dot(tl.trans((ds * scale).to(q.dtype)), q, IEEE)
    td, ind, rd = _block(s, h, j0, sd0, sd1, sd2, T, BLOCK_N)
    store_rows(dK, rd, inn, hd, dk, BLOCK_D)
    store_rows(dV, rd, inn, hd, dv, BLOCK_D)


def _tiles(dtype: torch.dtype, T: int, hd: int) -> tuple[dict, tuple[int, int]]:
    """64-wide blocks (32 x 64 in fp32, whose exact dot runs on FMAs), never wider than T."""
    bd = max(16, triton.next_power_of_2(hd))
    bn = min(64, max(16, triton.next_power_of_2(T)))
    bm = min(bn, 32) if dtype == torch.float32 else bn
    wide = bn * bd >= 64 * 64 or (dtype == torch.float32 and bn * bd >= 32 * 64)
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd), (8 if wide and dtype == torch.float32 else 4, 8 if wide else 4)


def _config(q, key_mask):
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InputError(f"temporal_attention (triton): q must be float32, bfloat16 or float16, got {q.dtype}")
    S, heads, T, hd = q.shape
    tiles, warps = _tiles(q.dtype, T, hd)
    meta = dict(HAS_MASK=key_mask is not None, IEEE=q.dtype == torch.float32, **tiles)
    km = key_mask if key_mask is not None else q.new_zeros(1, dtype=torch.bool)
    return meta, warps, km.contiguous()


def _strides(*ts):
    return tuple(x for t in ts for x in t.stride()[:3])


def _output_like(q):  # (S, heads, T, hd) stored as (S, T, heads, hd)
    S, heads, T, hd = q.shape
    return q.new_empty((S, T, heads, hd)).permute(0, 2, 1, 3)


def forward_launch(q, k, v, key_mask, scale):
    """(launch, out, lse) for prepared arguments; lse (S, heads, T) float32."""
    meta, warps, km = _config(q, key_mask)
    S, heads, T, hd = q.shape
    out = _output_like(q)
    lse = q.new_empty((S, heads, T), dtype=torch.float32)
    grid = (S, heads, triton.cdiv(T, meta["BLOCK_M"]))
    return Launch(_fwd, grid, (q, k, v, out, lse, km, T, hd, float(scale), *_strides(q, k, v, out)),
                  meta, warps[0]), out, lse


def backward_launches(grad_out, out, lse, q, k, v, key_mask, scale):
    """([dq launch, dk/dv launch], dq, dk, dv)."""
    meta, warps, km = _config(q, key_mask)
    S, heads, T, hd = q.shape
    grad_out = grad_out.to(q.dtype)
    grad_out = grad_out if grad_out.stride(3) == 1 else grad_out.contiguous()
    out = out.to(q.dtype)
    out = out if out.stride(3) == 1 else out.contiguous()
    lse = lse.float().contiguous()
    delta = torch.empty_like(lse)
    dq, dk, dv = _output_like(q), _output_like(q), _output_like(q)
    common = (T, hd, float(scale))
    dq_launch = Launch(_bwd_dq, (S, heads, triton.cdiv(T, meta["BLOCK_M"])),
                       (q, k, v, out, grad_out, lse, delta, km, dq, *common, *_strides(q, k, v, out, grad_out, dq)),
                       meta, warps[1])
    dkdv_launch = Launch(_bwd_dkdv, (S, heads, triton.cdiv(T, meta["BLOCK_N"])),
                         (q, k, v, grad_out, lse, delta, km, dk, dv, *common, *_strides(q, k, v, grad_out, dk)),
                         meta, warps[1])
    return [dq_launch, dkdv_launch], dq, dk, dv


def temporal_attention_forward(q, k, v, key_mask, scale):
    """(out, lse) for prepared arguments."""
    launch, out, lse = forward_launch(q, k, v, key_mask, scale)
    launch()
    return out, lse


def temporal_attention_backward(grad_out, out, lse, q, k, v, key_mask, scale):
    launches, dq, dk, dv = backward_launches(grad_out, out, lse, q, k, v, key_mask, scale)
    run(launches)
    return dq, dk, dv
