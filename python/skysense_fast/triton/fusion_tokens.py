"""Triton kernels for fusion token assembly (CUDA; CPU under TRITON_INTERPRET=1).

One launch per present modality; a program moves a (pixels x channels) block of one
acquisition's (C, h, w) plane into its slot of the (pixels, L, C) sequence, adding the date
embedding, and the backward moves it back and adds the block's pixel sums into the date
table's gradient (atomics). Arguments are checked by ``_C.fusion_tokens_check`` first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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
def _bwd(G, GX, Doy, Valid, GTable, HW, C, L, T, slot0,
         HAS_DOY: tl.constexpr, HAS_VALID: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    bt, b, t, p, c, m = _block(HW, C, T, BLOCK_P, BLOCK_C)
    g = tl.load(G + ((b.to(tl.int64) * HW + p[:, None]) * L + slot0 + t) * C + c[None, :], mask=m, other=0.0)
    g = g.to(tl.float32)
    if HAS_VALID:
        g = tl.where(tl.load(Valid + bt) != 0, g, 0.0)
    tl.store(GX + (bt.to(tl.int64) * C + c[None, :]) * HW + p[:, None], g.to(GX.dtype.element_ty), mask=m)
    if HAS_DOY:
        row = tl.maximum(tl.minimum(tl.load(Doy + bt), 365) - 1, 0)
        tl.atomic_add(GTable + row * C + c, tl.sum(g, 0), mask=c < C)


def _modalities(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1):
    """(features (B, T, C, h, w), doy (B*T,) int32 or None, valid (B*T,) int8 or None, slot0) per present one."""
    out, slot = [], 0
    for x, doy, valid in ((None if hr is None else hr.unsqueeze(1), None if doy_hr is None else doy_hr.reshape(-1, 1), None),
                          (s2, doy_s2, valid_s2), (s1, doy_s1, valid_s1)):
        if x is None:
            continue
        out.append((x.contiguous(), None if doy is None else doy.reshape(-1).to(torch.int32).contiguous(),
                    None if valid is None else valid.reshape(-1).to(torch.int8).contiguous(), slot))
        slot += x.shape[1]
    return out, slot


def _grid(B, T, HW, C):
    bp, bc = 32, min(64, triton.next_power_of_2(C))
    return (B * T, triton.cdiv(HW, bp), triton.cdiv(C, bc)), dict(BLOCK_P=bp, BLOCK_C=bc)


def fusion_tokens_forward(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table):
    mods, L = _modalities(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1)
    x0 = mods[0][0]
    B, _, C, h, w = x0.shape
    HW = h * w
    tokens = x0.new_empty((B * HW, L, C))
    table = None if date_table is None else date_table.reshape(DAYS, C).to(x0.dtype).contiguous()
    masks = []
    for x, doy, valid, slot0 in mods:
        T = x.shape[1]
        grid, blocks = _grid(B, T, HW, C)
        dummy = x.new_zeros(1, dtype=torch.int32)
        _fwd[grid](x, tokens, doy if doy is not None else dummy, valid if valid is not None else dummy,
                   table if table is not None else x0.new_zeros(1), HW, C, L, T, slot0,
                   HAS_DOY=doy is not None, HAS_VALID=valid is not None, **blocks)
        inval = torch.zeros(B, T, dtype=torch.bool, device=x.device) if valid is None else valid.view(B, T) == 0
        masks.append(inval)
    mask = torch.cat(masks, 1)[:, None].expand(B, HW, L).reshape(B * HW, L)
    return tokens, mask


def fusion_tokens_backward(grad, hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table):
    """Gradients of hr, s2, s1 and the table ((0,) where absent); the table's in float32."""
    mods, L = _modalities(hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1)
    x0 = mods[0][0]
    B, _, C, h, w = x0.shape
    HW = h * w
    grad = grad.to(x0.dtype).contiguous()
    gtable = grad.new_zeros((DAYS, C), dtype=torch.float32) if date_table is not None else None
    grads = {}
    for (x, doy, valid, slot0), name in zip(mods, [n for n, t in (("hr", hr), ("s2", s2), ("s1", s1)) if t is not None]):
        T = x.shape[1]
        gx = torch.empty_like(x)
        grid, blocks = _grid(B, T, HW, C)
        dummy = x.new_zeros(1, dtype=torch.int32)
        use_doy = doy is not None and gtable is not None
        _bwd[grid](grad, gx, doy if use_doy else dummy, valid if valid is not None else dummy,
                   gtable if gtable is not None else x.new_zeros(1, dtype=torch.float32), HW, C, L, T, slot0,
                   HAS_DOY=use_doy, HAS_VALID=valid is not None, **blocks)
        grads[name] = gx.squeeze(1) if name == "hr" else gx
    empty = grad.new_empty((0,))
    return (grads.get("hr", empty), grads.get("s2", empty), grads.get("s1", empty),
            gtable if gtable is not None else empty)
