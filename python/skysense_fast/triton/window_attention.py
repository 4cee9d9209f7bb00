"""Triton kernels for shifted-window attention (CUDA; CPU under TRITON_INTERPRET=1).

A window's tokens are gathered straight from the spatial (B, H, W, heads, head_dim) layout
of q, k and v, by stride (views of one qkv projection are read in place), with the cyclic
shift and the padding folded into the index computation; the shift mask comes from token
regions, never from memory. Tiles are flash-attention style (``attention_tile``): one
program per (window, head, block of queries) walks the window's key blocks, so windows up to
16 x 16 (N = 256) run in 64-wide tiles without spilling.

Backward: one kernel per (window, head, query block) for dq (it also writes the rows'
delta = rowsum(dO * O)), one per (group of windows, head, key block) for dk and dv. The
second sums the bias and logit-scale gradients over its group of windows in a fixed order
into a per-group partial (no atomics: deterministic), which torch then sums over groups.

Call the launchers with arguments checked by ``_C.window_attention_prepare``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import InputError
from ..ops.window_attention_reference import LOGIT_SCALE_MAX
from .attention_tile import dot, grad_scores, load_rows, softmax_step, store_rows
from .launch import Launch, run

MASK_VALUE = tl.constexpr(-100.0)
LS_MAX = tl.constexpr(LOGIT_SCALE_MAX)
NORM_EPS = tl.constexpr(1e-12)
PARTIAL_BYTES = 32 << 20   # cap on the backward's per-group bias-gradient partials
TARGET_PROGRAMS = 1024     # enough programs to fill an H100 several times over


@triton.jit
def _tokens(bw, t0, nW, nWw, H, W, Hp, Wp, WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr,
            SW: tl.constexpr, BLOCK: tl.constexpr):
    """Tokens t0 .. t0 + BLOCK of window bw: (t, b, map row, map col, inside the map, region)."""
    b = bw // nW
    w = bw % nW
    t = t0 + tl.arange(0, BLOCK)
    y = (w // nWw) * WH + t // WW
    x = (w % nWw) * WW + t % WW
    oy = (y + SH) % Hp
    ox = (x + SW) % Wp
    inside = (t < WH * WW) & (oy < H) & (ox < W)
    # Swin's regions [0, P - w), [P - w, P - s), [P - s, P); with s = 0 the last term is 0
    # and the first is constant inside every window, so no pair is masked on that axis
    ry = (y >= Hp - WH).to(tl.int32) + (y >= Hp - SH).to(tl.int32)
    rx = (x >= Wp - WW).to(tl.int32) + (x >= Wp - SW).to(tl.int32)
    return t, tl.cast(b, tl.int64), tl.cast(oy, tl.int64), tl.cast(ox, tl.int64), inside, ry * 3 + rx


@triton.jit
def _rows(b, oy, ox, h, s0, s1, s2, s3):
    return b * s0 + oy * s1 + ox * s2 + h * s3


@triton.jit
def _inv_norm(x, COSINE: tl.constexpr):
    """1 / max(|x|, eps) per row for cosine attention, 1 otherwise (fp32). The kernels keep q
    and k raw (16-bit) and fold these into the scores: C = (q k^T) * inv_q * inv_k."""
    if COSINE:
        xf = x.to(tl.float32)
        return 1.0 / tl.maximum(tl.sqrt(tl.sum(xf * xf, 1)), NORM_EPS)
    return tl.full([x.shape[0]], 1.0, tl.float32)


@triton.jit
def _normalize_grad(x, inv, dxn, COSINE: tl.constexpr):
    """Gradient of raw rows x from dxn, the gradient of x / max(|x|, eps)."""
    if COSINE:
        xn = x.to(tl.float32) * inv[:, None]
        proj = (dxn - xn * tl.sum(xn * dxn, 1)[:, None]) * inv[:, None]
        return tl.where(inv[:, None] < 1.0 / NORM_EPS, proj, dxn / NORM_EPS)
    return dxn


@triton.jit
def _tau(ls, h, scale, COSINE: tl.constexpr):
    if COSINE:
        return tl.exp(tl.minimum(tl.load(ls + h).to(tl.float32), LS_MAX))
    return scale


@triton.jit
def _scores(q, k, inq, ink, tau, bias, mask, mw, h, tm, tn, rm, rn, N: tl.constexpr, HAS_BIAS: tl.constexpr,
            HAS_MASK: tl.constexpr, SHIFTED: tl.constexpr, IEEE: tl.constexpr):
    """(C = q^ k^T, logits) of one (query block, key block) tile; q^, k^ the (cosine-)normalised rows."""
    c = dot(q, tl.trans(k), IEEE) * inq[:, None] * ink[None, :]
    s = c * tau
    inb = (tm[:, None] < N) & (tn[None, :] < N)
    if HAS_BIAS:
        s += tl.load(bias + (h * N + tm[:, None]) * N + tn[None, :], mask=inb, other=0.0)
    if SHIFTED:
        s += tl.where(rm[:, None] != rn[None, :], MASK_VALUE, 0.0)
    if HAS_MASK:
        s += tl.load(mask + (mw * N + tm[:, None]) * N + tn[None, :], mask=inb, other=0.0)
    return c, tl.where(tn[None, :] < N, s, float("-inf"))


@triton.jit
def _fwd(Q, K, V, Out, Lse, ls, bias, mask,
         sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, so0, so1, so2, so3,
         H, W, Hp, Wp, nW, nWw, hd, M, scale,
         WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
         COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bw = tl.program_id(0)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    N: tl.constexpr = WH * WW
    tm, b, y, x, inm, rm = _tokens(bw, tl.program_id(2) * BLOCK_M, nW, nWw, H, W, Hp, Wp, WH, WW, SH, SW, BLOCK_M)
    q = load_rows(Q, _rows(b, y, x, h, sq0, sq1, sq2, sq3), inm, hd, BLOCK_D)
    inq = _inv_norm(q, COSINE)
    tau = _tau(ls, h, scale, COSINE)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, N, BLOCK_N):
        tn, b_k, ky, kx, inn, rn = _tokens(bw, j0, nW, nWw, H, W, Hp, Wp, WH, WW, SH, SW, BLOCK_N)
        k = load_rows(K, _rows(b, ky, kx, h, sk0, sk1, sk2, sk3), inn, hd, BLOCK_D)
        v = load_rows(V, _rows(b, ky, kx, h, sv0, sv1, sv2, sv3), inn, hd, BLOCK_D)
        c_unused, s = _scores(q, k, inq, _inv_norm(k, COSINE), tau, bias, mask, bw % M, h, tm, tn, rm, rn, N,
                              HAS_BIAS, HAS_MASK, SH > 0 or SW > 0, IEEE)
        m_i, l_i, acc = softmax_step(s, m_i, l_i, acc, v, IEEE)
    store_rows(Out, _rows(b, y, x, h, so0, so1, so2, so3), inm, hd, acc / l_i[:, None], BLOCK_D)
    tl.store(Lse + (tl.cast(bw, tl.int64) * heads + h) * N + tm, m_i + tl.log(l_i), mask=tm < N)


@triton.jit
def _bwd_dq(Q, K, V, Out, dOut, Lse, Delta, QInv, ls, bias, mask, dQ,
            sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, so0, so1, so2, so3,
            sg0, sg1, sg2, sg3, H, W, Hp, Wp, nW, nWw, hd, M, scale,
            WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
            COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    bw = tl.program_id(0)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    N: tl.constexpr = WH * WW
    dt = Q.dtype.element_ty
    tm, b, y, x, inm, rm = _tokens(bw, tl.program_id(2) * BLOCK_M, nW, nWw, H, W, Hp, Wp, WH, WW, SH, SW, BLOCK_M)
    q = load_rows(Q, _rows(b, y, x, h, sq0, sq1, sq2, sq3), inm, hd, BLOCK_D)
    inq = _inv_norm(q, COSINE)
    do = load_rows(dOut, _rows(b, y, x, h, sg0, sg1, sg2, sg3), inm, hd, BLOCK_D).to(dt)
    o = load_rows(Out, _rows(b, y, x, h, so0, so1, so2, so3), inm, hd, BLOCK_D).to(tl.float32)
    delta = tl.sum(do.to(tl.float32) * o, 1)
    row = (tl.cast(bw, tl.int64) * heads + h) * N + tm
    tl.store(Delta + row, delta, mask=tm < N)
    if COSINE:
        tl.store(QInv + row, inq, mask=tm < N)
    lse = tl.load(Lse + row, mask=tm < N, other=0.0)
    tau = _tau(ls, h, scale, COSINE)
    dqn = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j0 in range(0, N, BLOCK_N):
        tn, b_k, ky, kx, inn, rn = _tokens(bw, j0, nW, nWw, H, W, Hp, Wp, WH, WW, SH, SW, BLOCK_N)
        k = load_rows(K, _rows(b, ky, kx, h, sk0, sk1, sk2, sk3), inn, hd, BLOCK_D)
        ink = _inv_norm(k, COSINE)
        v = load_rows(V, _rows(b, ky, kx, h, sv0, sv1, sv2, sv3), inn, hd, BLOCK_D)
        c_unused, s = _scores(q, k, inq, ink, tau, bias, mask, bw % M, h, tm, tn, rm, rn, N, HAS_BIAS, HAS_MASK,
                              SH > 0 or SW > 0, IEEE)
        p_unused, ds = grad_scores(s, lse, do, v, delta, IEEE)
        dqn += dot((ds * tau * ink[None, :]).to(dt), k, IEEE)
    store_rows(dQ, _rows(b, y, x, h, so0, so1, so2, so3), inm, hd, _normalize_grad(q, inq, dqn, COSINE), BLOCK_D)


@triton.jit
def _bwd_dkdv(Q, K, V, dOut, Lse, Delta, QInv, ls, bias, mask, dK, dV, dBiasPart, dLsPart,
              sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3, so0, so1, so2, so3,
              sg0, sg1, sg2, sg3, H, W, Hp, Wp, nW, nWw, hd, M, scale, BW, windows_per_program,
              WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
              COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    g = tl.program_id(0)
    h = tl.program_id(1)
    heads = tl.num_programs(1)
    N: tl.constexpr = WH * WW
    dt = Q.dtype.element_ty
    j0 = tl.program_id(2) * BLOCK_N
    tau = _tau(ls, h, scale, COSINE)
    dls = tl.zeros([BLOCK_N], tl.float32)
    bias_part = dBiasPart + (g.to(tl.int64) * heads + h) * N * N
    w_end = tl.minimum(g * windows_per_program + windows_per_program, BW)
    for bw in range(g * windows_per_program, w_end):
        tn, b, ky, kx, inn, rn = _tokens(bw, j0, nW, nWw, H, W, Hp, Wp, WH, WW, SH, SW, BLOCK_N)
        k = load_rows(K, _rows(b, ky, kx, h, sk0, sk1, sk2, sk3), inn, hd, BLOCK_D)
        ink = _inv_norm(k, COSINE)
        v = load_rows(V, _rows(b, ky, kx, h, sv0, sv1, sv2, sv3), inn, hd, BLOCK_D)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dkn = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for i0 in range(0, N, BLOCK_M):
            tm, b_q, y, x, inm, rm = _tokens(bw, i0, nW, nWw, H, W, Hp, Wp, WH, WW, SH, SW, BLOCK_M)
            q = load_rows(Q, _rows(b, y, x, h, sq0, sq1, sq2, sq3), inm, hd, BLOCK_D)
            do = load_rows(dOut, _rows(b, y, x, h, sg0, sg1, sg2, sg3), inm, hd, BLOCK_D).to(dt)
            row = (tl.cast(bw, tl.int64) * heads + h) * N + tm
            lse = tl.load(Lse + row, mask=tm < N, other=0.0)
            delta = tl.load(Delta + row, mask=tm < N, other=0.0)
            inq = tl.full([BLOCK_M], 1.0, tl.float32)
            if COSINE:  # the dq kernel's, read back rather than recomputed from q (registers)
                inq = tl.load(QInv + row, mask=tm < N, other=1.0)
            c, s = _scores(q, k, inq, ink, tau, bias, mask, bw % M, h, tm, tn, rm, rn, N, HAS_BIAS, HAS_MASK,
                           SH > 0 or SW > 0, IEEE)
            # rows past the window read dO = 0 and delta = 0: they add nothing
            p, ds = grad_scores(s, lse, do, v, delta, IEEE)
            dv += dot(tl.trans(p.to(dt)), do, IEEE)
            dkn += dot(tl.trans((ds * tau * inq[:, None]).to(dt)), q, IEEE)
            if HAS_BIAS:  # this program alone owns these partial entries: plain read-add-write
                inb = (tm[:, None] < N) & (tn[None, :] < N)
                offs = tm[:, None] * N + tn[None, :]
                tl.store(bias_part + offs, tl.load(bias_part + offs, mask=inb, other=0.0) + ds, mask=inb)
            if COSINE:
                dls += tl.sum(ds * c, 0)
        if COSINE:  # k re-read: keeping it live through the loop in a second layout spills on sm_80
            dkn = _normalize_grad(load_rows(K, _rows(b, ky, kx, h, sk0, sk1, sk2, sk3), inn, hd, BLOCK_D), ink, dkn,
                                  COSINE)
        store_rows(dK, _rows(b, ky, kx, h, so0, so1, so2, so3), inn, hd, dkn, BLOCK_D)
        store_rows(dV, _rows(b, ky, kx, h, so0, so1, so2, so3), inn, hd, dv, BLOCK_D)
    if COSINE:
        tl.store(dLsPart + (g * heads + h) * tl.num_programs(2) + tl.program_id(2), tl.sum(dls, 0))


def _tiles(dtype: torch.dtype, N: int, hd: int) -> dict[str, tuple[dict, int]]:
    """Per kernel (fwd, dq, dkdv): tile constexprs and num_warps. 64-wide key blocks, never
    wider than the window; 32-row query blocks for fp32 (its exact dot runs on FMAs with the
    operands in registers); 16 x 32 tiles and 8 warps in the dk/dv kernel, whose bias-gradient
    tile is read and written each step (the largest that spills on neither sm_80 nor sm_90
    with Triton 3.6 and 3.8); 8 warps once a tile is 64 x 64. ``make gpu-compile`` holds every
    choice here to no spills on the 16-bit paths."""
    bd = max(16, triton.next_power_of_2(hd))
    bn = min(64, max(16, triton.next_power_of_2(N)))
    bm = min(bn, 32) if dtype == torch.float32 else bn
    wide = 8 if bn * bd >= 64 * 64 else 4
    fp32 = dtype == torch.float32
    return {"fwd": (dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd), wide if fp32 else 4),
            "dq": (dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd), wide),
            "dkdv": (dict(BLOCK_M=min(bm, 16), BLOCK_N=min(bn, 32), BLOCK_D=bd), 8)}


def _config(q, logit_scale, bias, mask, scale, g):
    """(constexprs shared by the kernels, per-kernel tiles, scalar geometry, (logit_scale, bias,
    mask) or dummies)."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InputError(f"window_attention (triton): q must be float32, bfloat16 or float16, got {q.dtype}")
    meta = dict(WH=g["wh"], WW=g["ww"], SH=g["sh"], SW=g["sw"], COSINE=logit_scale is not None,
                HAS_BIAS=bias is not None, HAS_MASK=mask is not None, IEEE=q.dtype == torch.float32)
    geo = (g["H"], g["W"], g["Hp"], g["Wp"], g["nW"], g["nWw"], g["hd"],
           mask.shape[0] if mask is not None else 1, float(scale))
    dummy = q.new_empty((1,), dtype=torch.float32)
    aux = tuple(x if x is not None else dummy for x in (logit_scale, bias, mask))
    return meta, _tiles(q.dtype, g["N"], g["hd"]), geo, aux


def _strides(*ts):
    return tuple(s for t in ts for s in t.stride()[:4])


def forward_launch(q, k, v, logit_scale, bias, mask, scale, g):
    """(launch, out, lse) for prepared arguments; out contiguous, lse (B * nW, heads, N) fp32."""
    meta, tiles, geo, aux = _config(q, logit_scale, bias, mask, scale, g)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty((g["B"] * g["nW"], g["heads"], g["N"]), device=q.device, dtype=torch.float32)
    blocks, warps = tiles["fwd"]
    grid = (g["B"] * g["nW"], g["heads"], triton.cdiv(g["N"], blocks["BLOCK_M"]))
    launch = Launch(_fwd, grid, (q, k, v, out, lse, *aux, *_strides(q, k, v, out), *geo), meta | blocks, warps)
    return launch, out, lse


def _groups(BW: int, heads: int, N: int, key_blocks: int, has_bias: bool) -> tuple[int, int]:
    """(groups, windows per group) for the dk/dv kernel's fixed-order sums over windows."""
    groups = max(1, min(BW, triton.cdiv(TARGET_PROGRAMS, heads * key_blocks)))
    if has_bias:
        groups = max(1, min(groups, PARTIAL_BYTES // (heads * N * N * 4)))
    per = triton.cdiv(BW, groups)
    return triton.cdiv(BW, per), per


def backward_launches(grad_out, out, lse, q, k, v, logit_scale, bias, mask, scale, g):
    """([dq launch, dk/dv launch], dq, dk, dv, bias partials, logit-scale partials)."""
    meta, tiles, geo, (ls, b, m) = _config(q, logit_scale, bias, mask, scale, g)
    BW, heads, N = g["B"] * g["nW"], g["heads"], g["N"]
    grad_out = grad_out.to(q.dtype)
    grad_out = grad_out if grad_out.stride(4) == 1 else grad_out.contiguous()
    out = out.to(q.dtype).contiguous()
    lse = lse.float().contiguous()
    dq, dk, dv = (torch.empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))
    delta = torch.empty_like(lse)
    q_inv = torch.empty_like(lse) if logit_scale is not None else delta
    strides = _strides(q, k, v, dq, grad_out)
    (dq_blocks, dq_warps), (kv_blocks, kv_warps) = tiles["dq"], tiles["dkdv"]
    key_blocks = triton.cdiv(N, kv_blocks["BLOCK_N"])
    groups, per = _groups(BW, heads, N, key_blocks, bias is not None)
    f32 = dict(device=q.device, dtype=torch.float32)
    dbias = torch.zeros((groups, heads, N, N) if bias is not None else (1,), **f32)
    dls = torch.zeros((groups, heads, key_blocks) if logit_scale is not None else (1,), **f32)
    dq_launch = Launch(_bwd_dq, (BW, heads, triton.cdiv(N, dq_blocks["BLOCK_M"])),
                       (q, k, v, out, grad_out, lse, delta, q_inv, ls, b, m, dq, *strides, *geo), meta | dq_blocks,
                       dq_warps)
    dkdv_launch = Launch(_bwd_dkdv, (groups, heads, key_blocks),
                         (q, k, v, grad_out, lse, delta, q_inv, ls, b, m, dk, dv, dbias, dls, *strides, *geo, BW, per),
                         meta | kv_blocks, kv_warps)
    return [dq_launch, dkdv_launch], dq, dk, dv, dbias, dls


def window_attention_forward(q, k, v, logit_scale, bias, mask, scale, g):
    """(out, lse) for prepared arguments."""
    launch, out, lse = forward_launch(q, k, v, logit_scale, bias, mask, scale, g)
    launch()
    return out, lse


def window_attention_backward(grad_out, out, lse, q, k, v, logit_scale, bias, mask, scale, g):
    """(dq, dk, dv, d logit_scale, d bias); the last two are (0,) when not applicable."""
    launches, dq, dk, dv, dbias, dls = backward_launches(grad_out, out, lse, q, k, v, logit_scale, bias, mask,
                                                         scale, g)
    run(launches)
    if logit_scale is not None:  # d tau / d logit_scale = tau below the clamp, 0 above
        lsf = logit_scale.float()
        tau = torch.exp(torch.clamp(lsf, max=LOGIT_SCALE_MAX))
        dls = dls.sum((0, 2)) * torch.where(lsf < LOGIT_SCALE_MAX, tau, 0.0)
    else:
        dls = dls.new_empty((0,))
    dbias = dbias.sum(0) if bias is not None else dbias.new_empty((0,))
    return dq, dk, dv, dls, dbias
