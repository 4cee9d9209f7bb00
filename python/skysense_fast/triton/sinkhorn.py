"""Triton kernels for the log-domain Sinkhorn-Knopp op (CUDA; CPU under TRITON_INTERPRET=1).

Same algorithm as the CPU and CUDA C++ kernels (see ``csrc/sinkhorn/sinkhorn_cpu_kernel.cpp``):
an online column log-sum-exp for the first column update, then per iteration one row pass
that normalises a tile of rows and writes their per-column sums of Q into a partial buffer
(one row per program tile, so the reduction order is fixed and results are deterministic),
and a small kernel that folds the partials into the column potentials. Each row-pass program
owns a strided set of row tiles and one partial row (at most 512 programs per problem, so the
partials stay small and the fold short). When a whole row fits one tile (K <= 2048) the row
pass reads each score once per iteration; wider rows take two sweeps, the second column tile
by column tile, mostly from L2.

Call :func:`sinkhorn_triton` with arguments already checked by ``_C.sinkhorn_prepare``.
"""

from __future__ import annotations

from typing import TypedDict

import torch
import triton
import triton.language as tl

from ..errors import InputError
from .launch import Launch, run

# status codes, as in csrc/sinkhorn/sinkhorn.h
_NON_FINITE = tl.constexpr(1)
_EMPTY_COLUMN = tl.constexpr(2)
_EMPTY_ROW = tl.constexpr(3)
_PRECISION = tl.constexpr(4)


@triton.jit
def _col_partial(S, part_m, part_s, N, K, ROWS: tl.constexpr, inv_eps,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Online log-sum-exp of S/eps over rows [p*ROWS, (p+1)*ROWS) for a tile of columns."""
    pk = tl.program_id(0)
    p = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    P = tl.num_programs(1)
    cols = pk * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < K
    m = tl.full([BLOCK_K], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_K], tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        rows = p * ROWS + r0 + tl.arange(0, BLOCK_R)
        mask = (rows[:, None] < N) & cmask[None, :]
        x = tl.load(S + b * N * K + rows[:, None].to(tl.int64) * K + cols[None, :], mask=mask,
                    other=float("-inf")).to(tl.float32) * inv_eps
        m_new = tl.maximum(m, tl.max(x, 0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        # NaN or +inf in x makes s NaN, which col_finish reports
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[None, :]), 0)
        m = m_new
    o = (b * P + p) * K + cols
    tl.store(part_m + o, m, mask=cmask)
    tl.store(part_s + o, s, mask=cmask)


@triton.jit
def _col_finish(log_b, v, part_m, part_s, status, K, P, BLOCK_K: tl.constexpr):
    """v_k = log b_k - LSE over the partials; flags NaN/+inf and all -inf columns."""
    pk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pk * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < K
    m = tl.full([BLOCK_K], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_K], tl.float32)
    for p in range(0, P):
        o = (b * P + p) * K + cols
        pm = tl.load(part_m + o, mask=cmask, other=float("-inf"))
        ps = tl.load(part_s + o, mask=cmask, other=0.0)
        m_new = tl.maximum(m, pm)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = tl.where(s == 0.0, 0.0, s * tl.exp(m - shift)) + tl.where(ps == 0.0, 0.0, ps * tl.exp(pm - shift))
        m = m_new
    bad = cmask & ((s != s) | (m == float("inf")))
    empty = cmask & (s == 0.0) & (m == float("-inf"))
    lost = cmask & (s == 0.0) & (m > float("-inf"))  # a finite max with no mass: past float32's precision
    if tl.sum(bad.to(tl.int32), 0) > 0:
        tl.atomic_max(status + b, _NON_FINITE)
    elif tl.sum(lost.to(tl.int32), 0) > 0:
        tl.atomic_max(status + b, _PRECISION)
    elif tl.sum(empty.to(tl.int32), 0) > 0:
        tl.atomic_max(status + b, _EMPTY_COLUMN)
    lb = tl.load(log_b + b * K + cols, mask=cmask, other=0.0)
    tl.store(v + b * K + cols, lb - (m + tl.log(tl.where(s > 0.0, s, 1.0))), mask=cmask)


@triton.jit
def _row_scale(la, m, s, rmask, status, b):
    """a_n / row sum, 0 for rows outside the problem; flags rows that are all -inf."""
    empty = rmask & (m == float("-inf"))
    if tl.sum(empty.to(tl.int32), 0) > 0:
        tl.atomic_max(status + b, _EMPTY_ROW)
    ok = rmask & (s > 0.0)
    return tl.where(ok, tl.exp(la) / tl.where(ok, s, 1.0), 0.0)


@triton.jit
def _row_tile(tile, b, N, K, BLOCK_R: tl.constexpr):
    """Rows of a row tile: (rows, in range, element offset of each row in S / Q)."""
    rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)
    return rows, rows < N, b * N * K + rows[:, None].to(tl.int64) * K


@triton.jit
def _col_tile(k0, b, v, K, BLOCK_K: tl.constexpr):
    """Columns k0 .. k0 + BLOCK_K: (cols, in range, their potentials v)."""
    cols = k0 + tl.arange(0, BLOCK_K)
    cmask = cols < K
    return cols, cmask, tl.load(v + b * K + cols, mask=cmask, other=0.0)


@triton.jit
def _logits(S, base, cols, mask, vk, inv_eps):
    """S / eps + v for a tile, -inf outside the problem."""
    z = tl.load(S + base + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32) * inv_eps
    return z + vk[None, :]


@triton.jit
def _row_pass(S, Out, log_a, v, part_s, row_m, row_scale, done, status, N, K, inv_eps,
              WRITE: tl.constexpr, ACCUM: tl.constexpr, ONE_TILE: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Row update for the row tiles p, p + P, p + 2P, ...; writes Q and/or this program's
    column sums of Q (its own partial row: fixed order, no atomics)."""
    p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    P = tl.num_programs(0)
    if tl.load(done + b) == 0:
        n_tiles = tl.cdiv(N, BLOCK_R)
        if ONE_TILE:  # the whole row in one tile: one read of S, column sums in registers
            cols, cmask, vk = _col_tile(0, b, v, K, BLOCK_K)
            acc = tl.zeros([BLOCK_K], tl.float32)
            for tile in range(p, n_tiles, P):
                rows, rmask, base = _row_tile(tile, b, N, K, BLOCK_R)
                mask = rmask[:, None] & cmask[None, :]
                la = tl.load(log_a + b * N + rows, mask=rmask, other=0.0)
                z = _logits(S, base, cols, mask, vk, inv_eps)
                m = tl.max(z, 1)
                e = tl.exp(z - tl.where(m == float("-inf"), 0.0, m)[:, None])
                q = e * _row_scale(la, m, tl.sum(e, 1), rmask, status, b)[:, None]
                if WRITE:
                    tl.store(Out + base + cols[None, :], q.to(Out.dtype.element_ty), mask=mask)
                acc += tl.sum(q, 0)
            if ACCUM:
                tl.store(part_s + (b * P + p) * K + cols, acc, mask=cmask)
        else:
            # sweep 1: each row's online log-sum-exp over column tiles -> its shift and scale
            for tile in range(p, n_tiles, P):
                rows, rmask, base = _row_tile(tile, b, N, K, BLOCK_R)
                m = tl.full([BLOCK_R], float("-inf"), tl.float32)
                s = tl.zeros([BLOCK_R], tl.float32)
                for k0 in range(0, K, BLOCK_K):
                    cols, cmask, vk = _col_tile(k0, b, v, K, BLOCK_K)
                    z = _logits(S, base, cols, rmask[:, None] & cmask[None, :], vk, inv_eps)
                    m_new = tl.maximum(m, tl.max(z, 1))
                    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
                    s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift[:, None]), 1)
                    m = m_new
                la = tl.load(log_a + b * N + rows, mask=rmask, other=0.0)
                tl.store(row_m + b * N + rows, tl.where(m == float("-inf"), 0.0, m), mask=rmask)
                tl.store(row_scale + b * N + rows, _row_scale(la, m, s, rmask, status, b), mask=rmask)
            tl.debug_barrier()  # sweep 2 reads rows' stats that other threads of this program wrote
            # sweep 2, column tile by column tile: Q and the column sums over this program's rows
            for k0 in range(0, K, BLOCK_K):
                cols, cmask, vk = _col_tile(k0, b, v, K, BLOCK_K)
                acc = tl.zeros([BLOCK_K], tl.float32)
                for tile in range(p, n_tiles, P):
                    rows, rmask, base = _row_tile(tile, b, N, K, BLOCK_R)
                    mask = rmask[:, None] & cmask[None, :]
                    shift = tl.load(row_m + b * N + rows, mask=rmask, other=0.0)
                    scale = tl.load(row_scale + b * N + rows, mask=rmask, other=0.0)
                    q = tl.exp(_logits(S, base, cols, mask, vk, inv_eps) - shift[:, None]) * scale[:, None]
                    if WRITE:
                        tl.store(Out + base + cols[None, :], q.to(Out.dtype.element_ty), mask=mask)
                    acc += tl.sum(q, 0)
                if ACCUM:
                    tl.store(part_s + (b * P + p) * K + cols, acc, mask=cmask)


@triton.jit
def _row_finish(log_b, v, part_s, err, done, K, P, BLOCK_K: tl.constexpr):
    """v_k += log b_k - log colmass_k, colmass from the row tiles' partial sums."""
    pk = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    if tl.load(done + b) == 0:
        cols = pk * BLOCK_K + tl.arange(0, BLOCK_K)
        cmask = cols < K
        cm = tl.zeros([BLOCK_K], tl.float32)
        for p in range(0, P):
            cm += tl.load(part_s + (b * P + p) * K + cols, mask=cmask, other=0.0)
        lb = tl.load(log_b + b * K + cols, mask=cmask, other=0.0)
        tl.store(err + b * K + cols, tl.abs(cm - tl.exp(lb)), mask=cmask)
        vk = tl.load(v + b * K + cols, mask=cmask, other=0.0)
        tl.store(v + b * K + cols, vk + lb - tl.log(tl.maximum(cm, 1.1754944e-38)), mask=cmask)


@triton.jit(do_not_specialize=["t"])  # one binary for every iteration
def _decide(log_b, err, done, iters, K, tol, t, BLOCK_K: tl.constexpr):
    """Convergence mode: problem b stops once sum|colmass - b| / sum(b) <= tol."""
    b = tl.program_id(0).to(tl.int64)
    if tl.load(done + b) == 0:
        e = tl.zeros([BLOCK_K], tl.float32)
        tot = tl.zeros([BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            cmask = cols < K
            e += tl.load(err + b * K + cols, mask=cmask, other=0.0)
            tot += tl.where(cmask, tl.exp(tl.load(log_b + b * K + cols, mask=cmask, other=0.0)), 0.0)
        if tl.sum(e, 0) <= tol * tl.sum(tot, 0):
            tl.store(done + b, 1)
            tl.store(iters + b, t + 1)


ROW_PROGRAMS = 512            # row-pass programs per problem, at most
PARTIAL_FLOATS = 8 << 20      # cap on the row pass's column-sum partials (32 MB)


class _Alloc(TypedDict):
    """Keyword arguments of a scratch allocation (typed so that ``torch.empty(..., **f32)`` checks)."""

    device: torch.device
    dtype: torch.dtype


def _tiles(B: int, N: int, K: int) -> tuple[int, int, bool, int]:
    """(BLOCK_R, BLOCK_K, ONE_TILE, programs per problem) for the row pass. A whole row per
    tile while K <= 2048 (S read once per iteration, rows of at least 4); wider rows in two
    sweeps of 16 x 1024 tiles, the second mostly from L2."""
    kp = triton.next_power_of_2(K)
    if kp <= 2048:
        block_r, block_k, one = max(1, min(64, 8192 // kp, triton.next_power_of_2(N))), kp, True
    else:
        block_r, block_k, one = 16, 1024, False
    programs = min(triton.cdiv(N, block_r), ROW_PROGRAMS, max(1, PARTIAL_FLOATS // (B * K)))
    return block_r, block_k, one, programs


def launches(scores: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, epsilon: float, num_iters: int,
             tol: float, out: torch.Tensor | None = None):
    """(launches, Q, iters, status) for prepared (B, N, K) scores: the kernels to run, in order,
    into `out` (new if None), contiguous (B, N, K)."""
    if scores.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InputError(f"sinkhorn (triton): scores must be float32, bfloat16 or float16, got {scores.dtype}")
    B, N, K = scores.shape
    dev = scores.device
    f32: _Alloc = {"device": dev, "dtype": torch.float32}
    out = torch.empty_like(scores) if out is None else out
    iters = torch.full((B,), num_iters, device=dev, dtype=torch.int64)
    status = torch.zeros(B, device=dev, dtype=torch.int32)
    done = torch.zeros(B, device=dev, dtype=torch.int32)
    v = torch.empty(B, K, **f32)
    err = torch.empty(B, K, **f32)
    inv_eps = 1.0 / epsilon

    col_bk = min(128, triton.next_power_of_2(K))
    col_br = min(32, triton.next_power_of_2(N))
    col_rows = max(col_br, min(256, triton.next_power_of_2(N)))
    Pc = triton.cdiv(N, col_rows)
    block_r, block_k, one_tile, Pr = _tiles(B, N, K)
    col_m, col_s = torch.empty(B, Pc, K, **f32), torch.empty(B, Pc, K, **f32)
    part_s = torch.empty(B, Pr, K, **f32)
    row_m, row_scale = (torch.empty(B, N, **f32) for _ in range(2)) if not one_tile else (v, v)
    fin_bk = min(128, triton.next_power_of_2(K))
    fin_grid = (triton.cdiv(K, fin_bk), B)

    plan = [Launch(_col_partial, (triton.cdiv(K, col_bk), Pc, B), (scores, col_m, col_s, N, K, col_rows, inv_eps),
                   dict(BLOCK_R=col_br, BLOCK_K=col_bk)),
            Launch(_col_finish, fin_grid, (log_b, v, col_m, col_s, status, K, Pc), dict(BLOCK_K=fin_bk))]
    row_warps = 8 if block_r * block_k >= 8192 else 4
    for t in range(num_iters):
        last = t + 1 == num_iters
        write, accum = last or tol > 0, (not last) or tol > 0
        plan.append(Launch(_row_pass, (Pr, B),
                           (scores, out, log_a, v, part_s, row_m, row_scale, done, status, N, K, inv_eps),
                           dict(WRITE=write, ACCUM=accum, ONE_TILE=one_tile, BLOCK_R=block_r, BLOCK_K=block_k),
                           row_warps))
        if accum:
            plan.append(Launch(_row_finish, fin_grid, (log_b, v, part_s, err, done, K, Pr), dict(BLOCK_K=fin_bk)))
        if tol > 0:
            plan.append(Launch(_decide, (B,), (log_b, err, done, iters, K, tol, t), dict(BLOCK_K=fin_bk)))
    return plan, out, iters, status


def sinkhorn_triton(scores: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, epsilon: float,
                    num_iters: int, tol: float, out: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the kernels on prepared (B, N, K) scores into `out` (new if None), contiguous
    (B, N, K); returns (Q, iters, status)."""
    plan, out, iters, status = launches(scores, log_a, log_b, epsilon, num_iters, tol, out)
    run(plan)
    return out, iters, status
