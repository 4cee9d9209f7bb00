"""Triton kernels for fusion token assembly (CUDA; CPU under TRITON_INTERPRET=1).

One launch per present modality; a program moves a (pixels x channels) block of one
acquisition's (C, h, w) plane into its slot of the (pixels, L, C) sequence, adding the date
embedding. The backward moves each frame back, one program per (frame, channel block)
walking the pixels, and sums them for the date table's gradient in a fixed order (no atomics). Arguments are
checked by ``_C.fusion_tokens_check`` first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import Launch, run

DAYS = 365


@triton.jit
def _block(HW, C, T, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's frame (b, t) and its (pixels x channels) block, with the bounds mask."""
    bt = tl.program_id(0)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    return bt, bt // T, bt % T, p, c, (p[:, None] < HW) & (c[None, :] < C)


@triton.jit
def _fwd(X, Tok, Doy, Valid, Table, HW, C, L, T, slot0,
         HAS_DOY: tl.constexpr, HAS_VALID: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    bt, b, t, p, c, m = _block(HW, C, T, BLOCK_P, BLOCK_C)
    x = tl.load(X + (bt.to(tl.int64) * C + c[None, :]) * HW + p[:, None], mask=m, other=0.0).to(tl.float32)
    if HAS_DOY:
        row = tl.maximum(tl.minimum(tl.load(Doy + bt), 365) - 1, 0)
        x += tl.load(Table + row * C + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
    if HAS_VALID:
        x = tl.where(tl.load(Valid + bt) != 0, x, 0.0)
    tl.store(Tok + ((b.to(tl.int64) * HW + p[:, None]) * L + slot0 + t) * C + c[None, :], x.to(Tok.dtype.element_ty),
             mask=m)


@triton.jit
def _bwd(G, GX, Valid, GPart, HW, C, L, T, slot0,
         HAS_VALID: tl.constexpr, HAS_PART: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Moves one frame's channel block back to (C, h, w), walking its pixels; with HAS_PART
    also writes the frame's pixel sums (its date row's share of the table gradient)."""
    bt = tl.program_id(0)
    b = bt // T
    t = bt % T
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    keep = True
    if HAS_VALID:
        keep = tl.load(Valid + bt) != 0
    acc = tl.zeros([BLOCK_C], tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (p[:, None] < HW) & (c[None, :] < C)
        g = tl.load(G + ((b.to(tl.int64) * HW + p[:, None]) * L + slot0 + t) * C + c[None, :], mask=m, other=0.0)
        g = tl.where(keep, g.to(tl.float32), 0.0)
        tl.store(GX + (bt.to(tl.int64) * C + c[None, :]) * HW + p[:, None], g.to(GX.dtype.element_ty), mask=m)
        acc += tl.sum(g, 0)
    if HAS_PART:
        tl.store(GPart + bt.to(tl.int64) * C + c, acc, mask=c < C)


def _modalities(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1):
    """(features (B, T, C, h, w), doy (B*T,) int32 or None, valid (B*T,) int8 or None, slot0) per present one."""
    out, slot = [], 0
    hr_part = (None if hr is None else hr.unsqueeze(1), None if doy_hr is None else doy_hr.reshape(-1, 1), None)
    for x, doy, valid in (hr_part, (s2, doy_s2, valid_s2), (s1, doy_s1, valid_s1)):
        if x is None:
            continue
        out.append((x.contiguous(), None if doy is None else doy.reshape(-1).to(torch.int32).contiguous(),
                    None if valid is None else valid.reshape(-1).to(torch.int8).contiguous(), slot))
        slot += x.shape[1]
    return out, slot


def _blocks(C):
    return dict(BLOCK_P=32, BLOCK_C=min(64, triton.next_power_of_2(C)))


def forward_launches(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table):
    """(launches, tokens (B*h*w, L, C), key padding mask (B*h*w, L)) for checked arguments."""
    mods, L = _modalities(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1)
    x0 = mods[0][0]
    B, _, C, h, w = x0.shape
    HW = h * w
    tokens = x0.new_empty((B * HW, L, C))
    table = None if date_table is None else date_table.reshape(DAYS, C).to(x0.dtype).contiguous()
    plan, masks = [], []
    blocks = _blocks(C)
    for x, doy, valid, slot0 in mods:
        T = x.shape[1]
        dummy = x.new_zeros(1, dtype=torch.int32)
        grid = (B * T, triton.cdiv(HW, blocks["BLOCK_P"]), triton.cdiv(C, blocks["BLOCK_C"]))
        plan.append(Launch(_fwd, grid, (x, tokens, doy if doy is not None else dummy,
                                        valid if valid is not None else dummy,
                                        table if table is not None else x0.new_zeros(1), HW, C, L, T, slot0),
                           dict(HAS_DOY=doy is not None, HAS_VALID=valid is not None, **blocks)))
        masks.append(torch.zeros(B, T, dtype=torch.bool, device=x.device) if valid is None else valid.view(B, T) == 0)
    mask = torch.cat(masks, 1)[:, None].expand(B, HW, L).reshape(B * HW, L)
    return plan, tokens, mask


def fusion_tokens_forward(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table):
    plan, tokens, mask = forward_launches(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table)
    run(plan)
    return tokens, mask


def backward_launches(grad, hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table):
    """(launches, {name: grad}, [(per-frame pixel sums, their date rows)]) for checked arguments."""
    mods, L = _modalities(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1)
    x0 = mods[0][0]
    B, _, C, h, w = x0.shape
    HW = h * w
    grad = grad.to(x0.dtype).contiguous()
    blocks = _blocks(C)
    plan, grads, parts = [], {}, []
    names = [n for n, t in (("hr", hr), ("s2", s2), ("s1", s1)) if t is not None]
    for (x, doy, valid, slot0), name in zip(mods, names, strict=True):
        T = x.shape[1]
        gx = torch.empty_like(x)
        use_doy = doy is not None and date_table is not None
        part = grad.new_empty((B * T, C), dtype=torch.float32) if use_doy else grad.new_zeros(1, dtype=torch.float32)
        if use_doy:
            parts.append((part, doy))
        plan.append(Launch(_bwd, (B * T, triton.cdiv(C, blocks["BLOCK_C"])),
                           (grad, gx, valid if valid is not None else x.new_zeros(1, dtype=torch.int8), part,
                            HW, C, L, T, slot0),
                           dict(HAS_VALID=valid is not None, HAS_PART=use_doy, **blocks)))
        grads[name] = gx.squeeze(1) if name == "hr" else gx
    return plan, grads, parts


def fusion_tokens_backward(grad, hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table):
    """Gradients of hr, s2, s1 and the table ((0,) where absent); the table's in float32.
    Frames' pixel sums go to their date rows by a one-hot product in float64: deterministic
    (no atomics) and exact enough to match the reference's summation."""
    plan, grads, parts = backward_launches(grad, hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table)
    run(plan)
    empty = grad.new_empty((0,))
    gtable = empty
    if date_table is not None:
        C = grad.shape[-1]
        gtable = grad.new_zeros((DAYS, C), dtype=torch.float64)
        for part, doy in parts:
            rows = doy.long().clamp(1, DAYS) - 1
            gtable += torch.nn.functional.one_hot(rows, DAYS).to(torch.float64).T @ part.double()
        gtable = gtable.float()
    return grads.get("hr", empty), grads.get("s2", empty), grads.get("s1", empty), gtable
