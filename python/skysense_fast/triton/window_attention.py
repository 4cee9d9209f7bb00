"""Triton kernels for shifted-window attention (CUDA; CPU under TRITON_INTERPRET=1).

One program per (image x window, head): the window's tokens are gathered straight from the
spatial (B, H, W, heads, head_dim) layout with the cyclic shift and the padding folded into
the index computation, the N x N scores live in registers (N <= 256), and the output is
scattered back; the shift mask comes from token regions, never from memory. The backward
recomputes the probabilities from the forward's per-row log-sum-exp; the bias and
logit-scale gradients are summed over windows with atomics.

Call these with arguments checked by ``_C.window_attention_prepare``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MASK_VALUE = tl.constexpr(-100.0)
LOGIT_SCALE_MAX = 4.605170185988091  # log(100)
NORM_EPS = tl.constexpr(1e-12)


@triton.jit
def _tokens(pid_bw, nW, nWw, H, W, Hp, Wp, heads, hd, h,
            WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets of this window's (token, channel) elements, their validity, and the regions."""
    b = pid_bw // nW
    w = pid_bw % nW
    t = tl.arange(0, BLOCK_N)
    y = (w // nWw) * WH + t // WW
    x = (w % nWw) * WW + t % WW
    oy = (y + SH) % Hp
    ox = (x + SW) % Wp
    valid = (t < WH * WW) & (oy < H) & (ox < W)
    # Swin's regions [0, P - w), [P - w, P - s), [P - s, P); with s = 0 the last term is 0
    # and the first is constant inside every window, so no pair is masked on that axis
    ry = (y >= Hp - WH).to(tl.int32) + (y >= Hp - SH).to(tl.int32)
    rx = (x >= Wp - WW).to(tl.int32) + (x >= Wp - SW).to(tl.int32)
    d = tl.arange(0, BLOCK_D)
    row = ((b.to(tl.int64) * H + oy) * W + ox) * heads + h
    offs = row[:, None] * hd + d[None, :]
    m2 = valid[:, None] & (d[None, :] < hd)
    return offs, m2, t, ry * 3 + rx


@triton.jit
def _logits(q, k, bias, mask, ls, pid_bw, h, t, region, M, scale,
            N: tl.constexpr, COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr,
            SHIFTED: tl.constexpr, IEEE: tl.constexpr):
    """(scores C before scaling, logits) for one window and head; q, k already normalised."""
    if IEEE:
        c = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        c = tl.dot(q, tl.trans(k))
    if COSINE:
        tau = tl.exp(tl.minimum(tl.load(ls + h), LOGIT_SCALE_MAX))
    else:
        tau = scale
    s = c * tau
    inb = (t[:, None] < N) & (t[None, :] < N)
    if HAS_BIAS:
        s += tl.load(bias + (h * N + t[:, None]) * N + t[None, :], mask=inb, other=0.0)
    if SHIFTED:
        s += tl.where(region[:, None] != region[None, :], MASK_VALUE, 0.0)
    if HAS_MASK:
        m = pid_bw % M
        s += tl.load(mask + (m * N + t[:, None]) * N + t[None, :], mask=inb, other=0.0)
    s = tl.where(t[None, :] < N, s, float("-inf"))
    return c, s, tau


@triton.jit
def _normalize(x, COSINE: tl.constexpr):
    if COSINE:
        n = tl.sqrt(tl.sum(x * x, 1))
        return x / tl.maximum(n, NORM_EPS)[:, None], n
    return x, tl.sum(x * 0.0, 1) + 1.0


@triton.jit
def _load_scores(Q, K, V, ls, bias, mask, pid_bw, h, H, W, Hp, Wp, nW, nWw, heads, hd, M, scale,
                 WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                 COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """One window and head: offsets, q^ / k^ with their norms, v, and (C, logits, tau)."""
    offs, m2, t, region = _tokens(pid_bw, nW, nWw, H, W, Hp, Wp, heads, hd, h, WH, WW, SH, SW, BLOCK_N, BLOCK_D)
    qn, nq = _normalize(tl.load(Q + offs, mask=m2, other=0.0).to(tl.float32), COSINE)
    kn, nk = _normalize(tl.load(K + offs, mask=m2, other=0.0).to(tl.float32), COSINE)
    v = tl.load(V + offs, mask=m2, other=0.0)
    c, s, tau = _logits(qn.to(v.dtype), kn.to(v.dtype), bias, mask, ls, pid_bw, h, t, region, M, scale,
                        WH * WW, COSINE, HAS_BIAS, HAS_MASK, SH > 0 or SW > 0, IEEE)
    return offs, m2, t, qn, nq, kn, nk, v, c, s, tau


@triton.jit
def _fwd(Q, K, V, Out, Lse, ls, bias, mask, H, W, Hp, Wp, nW, nWw, heads, hd, M, scale,
         WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
         COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bw = tl.program_id(0)
    h = tl.program_id(1)
    N: tl.constexpr = WH * WW
    offs, m2, t, _, _, _, _, v, _, s, _ = _load_scores(
        Q, K, V, ls, bias, mask, pid_bw, h, H, W, Hp, Wp, nW, nWw, heads, hd, M, scale,
        WH, WW, SH, SW, COSINE, HAS_BIAS, HAS_MASK, IEEE, BLOCK_N, BLOCK_D)
    dt = v.dtype
    mx = tl.max(s, 1)
    p = tl.exp(s - mx[:, None])
    den = tl.sum(p, 1)
    p = p / den[:, None]
    if IEEE:
        o = tl.dot(p.to(dt), v, input_precision="ieee")
    else:
        o = tl.dot(p.to(dt), v)
    tl.store(Out + offs, o.to(Out.dtype.element_ty), mask=m2)
    tl.store(Lse + (pid_bw * heads + h) * N + t, mx + tl.log(den), mask=t < N)


@triton.jit
def _bwd(Q, K, V, Out, dOut, Lse, ls, bias, mask, dQ, dK, dV, dLs, dBias,
         H, W, Hp, Wp, nW, nWw, heads, hd, M, scale,
         WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
         COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bw = tl.program_id(0)
    h = tl.program_id(1)
    N: tl.constexpr = WH * WW
    offs, m2, t, qn, nq, kn, nk, v, c, s, tau = _load_scores(
        Q, K, V, ls, bias, mask, pid_bw, h, H, W, Hp, Wp, nW, nWw, heads, hd, M, scale,
        WH, WW, SH, SW, COSINE, HAS_BIAS, HAS_MASK, IEEE, BLOCK_N, BLOCK_D)
    dt = v.dtype
    do = tl.load(dOut + offs, mask=m2, other=0.0)
    o = tl.load(Out + offs, mask=m2, other=0.0).to(tl.float32)
    lse = tl.load(Lse + (pid_bw * heads + h) * N + t, mask=t < N, other=0.0)
    p = tl.exp(s - lse[:, None])
    D = tl.sum(do.to(tl.float32) * o, 1)
    if IEEE:
        dv = tl.dot(tl.trans(p.to(dt)), do, input_precision="ieee")
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
    else:
        dv = tl.dot(tl.trans(p.to(dt)), do)
        dp = tl.dot(do, tl.trans(v))
    ds = p * (dp - D[:, None])
    inb = (t[:, None] < N) & (t[None, :] < N)
    if HAS_BIAS:
        tl.atomic_add(dBias + (h * N + t[:, None]) * N + t[None, :], ds, mask=inb)
    if COSINE:
        tl.atomic_add(dLs + h, tl.sum(tl.sum(ds * c, 1), 0))
    dc = (ds * tau).to(dt)
    if IEEE:
        dqn = tl.dot(dc, kn.to(dt), input_precision="ieee")
        dkn = tl.dot(tl.trans(dc), qn.to(dt), input_precision="ieee")
    else:
        dqn = tl.dot(dc, kn.to(dt))
        dkn = tl.dot(tl.trans(dc), qn.to(dt))
    if COSINE:  # back through x / max(|x|, eps)
        dqn = tl.where(nq[:, None] > NORM_EPS, (dqn - qn * tl.sum(qn * dqn, 1)[:, None]) / tl.maximum(nq, NORM_EPS)[:, None],
                       dqn / NORM_EPS)
        dkn = tl.where(nk[:, None] > NORM_EPS, (dkn - kn * tl.sum(kn * dkn, 1)[:, None]) / tl.maximum(nk, NORM_EPS)[:, None],
                       dkn / NORM_EPS)
    tl.store(dQ + offs, dqn.to(dQ.dtype.element_ty), mask=m2)
    tl.store(dK + offs, dkn.to(dK.dtype.element_ty), mask=m2)
    tl.store(dV + offs, dv.to(dV.dtype.element_ty), mask=m2)


def _launch_args(q, logit_scale, bias, mask, scale, g):
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"window_attention (triton): q must be float32, bfloat16 or float16, got {q.dtype}")
    dummy = q.new_empty((1,), dtype=torch.float32)
    meta = dict(WH=g["wh"], WW=g["ww"], SH=g["sh"], SW=g["sw"], COSINE=logit_scale is not None,
                HAS_BIAS=bias is not None, HAS_MASK=mask is not None, IEEE=q.dtype == torch.float32,
                BLOCK_N=max(16, triton.next_power_of_2(g["N"])), BLOCK_D=max(16, triton.next_power_of_2(g["hd"])))
    geo = (g["H"], g["W"], g["Hp"], g["Wp"], g["nW"], g["nWw"], g["heads"], g["hd"],
           mask.shape[0] if mask is not None else 1, float(scale))
    aux = tuple(x if x is not None else dummy for x in (logit_scale, bias, mask))
    return meta, geo, aux, (g["B"] * g["nW"], g["heads"])


def window_attention_forward(q, k, v, logit_scale, bias, mask, scale, g):
    """(out, lse) for prepared arguments; lse (B * nW, heads, N) float32."""
    meta, geo, (ls, b, m), grid = _launch_args(q, logit_scale, bias, mask, scale, g)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the kernels index contiguous maps
    out = torch.empty_like(q)
    lse = torch.empty((g["B"] * g["nW"], g["heads"], g["N"]), device=q.device, dtype=torch.float32)
    _fwd[grid](q, k, v, out, lse, ls, b, m, *geo, **meta)
    return out, lse


def window_attention_backward(grad_out, out, lse, q, k, v, logit_scale, bias, mask, scale, g):
    """(dq, dk, dv, d logit_scale, d bias); the last two are (0,) when not applicable."""
    meta, geo, (ls, b, m), grid = _launch_args(q, logit_scale, bias, mask, scale, g)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dq, dk, dv = (torch.empty_like(q) for _ in range(3))
    dls = torch.zeros(g["heads"] if logit_scale is not None else 1, device=q.device, dtype=torch.float32)
    db = torch.zeros((g["heads"], g["N"], g["N"]) if bias is not None else (1,), device=q.device, dtype=torch.float32)
    _bwd[grid](q, k, v, out.to(q.dtype).contiguous(), grad_out.to(q.dtype).contiguous(), lse.contiguous(), ls, b, m,
               dq, dk, dv, dls, db, *geo, **meta)
    if logit_scale is not None:  # d tau / d logit_scale = tau below the clamp, 0 above
        lsf = logit_scale.float()
        dls = dls * torch.where(lsf < LOGIT_SCALE_MAX, torch.exp(torch.clamp(lsf, max=LOGIT_SCALE_MAX)), 0.0)
    else:
        dls = dls.new_empty((0,))
    if bias is None:
        db = db.new_empty((0,))
    return dq, dk, dv, dls, db
