"""Tile math shared by the Triton attention kernels (window and temporal attention).

Flash-attention style: a program owns a block of query rows and walks the key blocks with an
online softmax, so no N x N matrix is ever held whole; the backward recomputes the
probabilities from the forward's per-row log-sum-exp. A row with no finite score (every key
masked to -inf) ends with l = 0, hence NaN, as the softmax of the reference and SDPA give.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    """a @ b; fp32 exactly (no TF32) when IEEE, tensor cores otherwise."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def softmax_step(s, m_i, l_i, acc, v, IEEE: tl.constexpr):
    """One key block of the online softmax: scores s (BM, BN), values v (BN, D)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row masked so far stays at 0 mass
    alpha = tl.exp(m_i - shift)
    p = tl.exp(s - shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, IEEE)
    return m_new, l_i, acc


@triton.jit
def grad_scores(s, lse, do, v, delta, IEEE: tl.constexpr):
    """(p, dS) of one tile from the scores, the rows' lse and delta = rowsum(dO * O)."""
    p = tl.exp(s - lse[:, None])
    dp = dot(do, tl.trans(v), IEEE)
    return p, p * (dp - delta[:, None])


@triton.jit
def load_rows(X, rows, valid, hd, BLOCK_D: tl.constexpr):
    """Rows of head_dim channels at element offsets `rows`; 0 where not valid."""
    d = tl.arange(0, BLOCK_D)
    return tl.load(X + rows[:, None] + d[None, :], mask=valid[:, None] & (d[None, :] < hd), other=0.0)


@triton.jit
def store_rows(X, rows, valid, hd, x, BLOCK_D: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    tl.store(X + rows[:, None] + d[None, :], x.to(X.dtype.element_ty), mask=valid[:, None] & (d[None, :] < hd))
