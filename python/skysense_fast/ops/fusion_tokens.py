"""Multimodal fusion token assembly (``torch.ops.skysense.fusion_tokens``).

SkySense fuses the modalities per pixel of the common feature grid: the HR token, every
Sentinel-2 acquisition and every Sentinel-1 acquisition of that pixel form one sequence,
with a learned day-of-year embedding added. Eagerly that is permute + cat + index + add over
the whole feature volume (several passes); here it is one blocked transpose per frame.

Pieces: schemas and CPU kernels (forward, backward) in ``csrc/fusion_tokens/``; the CUDA
kernels in ``skysense_fast.triton.fusion_tokens``; fake kernels and autograd here;
:func:`fusion_tokens_reference`, the specification.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _lib
from ..backends import select
from ._dtypes import acc_dtype, same_device
from ..errors import InputError

__all__ = ["fusion_tokens", "fusion_tokens_reference"]

IMPLEMENTED = {"reference": ("cpu", "cuda"), "cpp": ("cpu",), "triton": ("cuda",)}
CUDA_ORDER = ("triton",)
DATE_TABLE_DAYS = 365


def fusion_tokens_reference(hr: Tensor | None = None, s2: Tensor | None = None, s1: Tensor | None = None,
                            doy_hr: Tensor | None = None, doy_s2: Tensor | None = None, doy_s1: Tensor | None = None,
                            valid_s2: Tensor | None = None, valid_s1: Tensor | None = None,
                            date_table: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-pixel token sequences of the multimodal fusion.

    Args:
        hr: (B, C, h, w) high-resolution features on the fusion grid, or None (absent).
        s2, s1: (B, T, C, h, w) Sentinel-2 / Sentinel-1 features per acquisition, or None.
        doy_hr (B,), doy_s2 (B, T1), doy_s1 (B, T2): integer days of year 1..366 of each
            acquisition; None adds no date embedding to that modality (the official
            SkySense++ code embeds S2 dates only; the paper dates every token).
        valid_s2, valid_s1: (B, T) bool, False for padding acquisitions (samples with fewer
            acquisitions than T); None: all valid.
        date_table: (365, C) or (1, 365, C) learned table (the official ``ctpe``); day d uses
            row min(d, 365) - 1, so day 366 shares day 365's row. A day outside 1..366 is
            an error on the CPU; on CUDA, where checking would sync the host, it is clamped
            into 1..365.

    Returns:
        tokens (B h w, L, C), pixel n = (b h + y) w + x, slots [HR, S2 x T1, S1 x T2]
        (absent modalities take none): features + date embedding, 0 for invalid
        acquisitions; key_padding_mask (B h w, L) bool, True for invalid acquisitions (so
        the attention ignores them; the class token the fusion prepends keeps every pixel's
        sequence non-empty).
    """
    tokens, masks = [], []
    table = None if date_table is None else date_table.reshape(DATE_TABLE_DAYS, -1)
    for x, doy, valid in ((None if hr is None else hr.unsqueeze(1), None if doy_hr is None else doy_hr.reshape(-1, 1),
                           None), (s2, doy_s2, valid_s2), (s1, doy_s1, valid_s1)):
        if x is None:
            continue
        B, T, C, h, w = x.shape
        tok = x.permute(0, 3, 4, 1, 2)  # (B, h, w, T, C)
        if doy is not None:
            tok = tok + table[doy.long().clamp(1, DATE_TABLE_DAYS) - 1].to(tok.dtype)[:, None, None]
        if valid is not None:
            tok = tok * valid[:, None, None, :, None].to(tok.dtype)
        tokens.append(tok.reshape(B * h * w, T, C))
        invalid = torch.zeros(B, T, dtype=torch.bool, device=x.device) if valid is None else ~valid
        masks.append(invalid[:, None].expand(B, h * w, T).reshape(B * h * w, T))
    return torch.cat(tokens, 1), torch.cat(masks, 1)


def fusion_tokens(hr: Tensor | None = None, s2: Tensor | None = None, s1: Tensor | None = None, *,
                  doy_hr: Tensor | None = None, doy_s2: Tensor | None = None, doy_s1: Tensor | None = None,
                  valid_s2: Tensor | None = None, valid_s1: Tensor | None = None,
                  date_table: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fused :func:`fusion_tokens_reference`; differentiable in the features and the table."""
    args = (hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table)
    present = next((x for x in (hr, s2, s1) if x is not None), None)
    if present is None:
        raise InputError("fusion_tokens: at least one of hr, s2, s1 must be given")
    backend = select("fusion_tokens", present.device, IMPLEMENTED, CUDA_ORDER)
    if backend == "reference":
        if _lib.load_error() is None:  # the kernels' argument checks, for the same errors
            _lib.native().fusion_tokens_check(*args)
        return fusion_tokens_reference(*args)
    _lib.native()
    if backend == "triton" and present.device.type == "cpu":  # the Triton interpreter (tests)
        return _TritonOnCpu.apply(*args)
    return torch.ops.skysense.fusion_tokens(*args)


class _TritonOnCpu(torch.autograd.Function):
    """The Triton kernels on CPU tensors under TRITON_INTERPRET=1 (tests only)."""

    @staticmethod
    def forward(ctx, *args):
        from ..triton.fusion_tokens import fusion_tokens_forward

        _lib.native().fusion_tokens_check(*args)
        ctx.save_for_backward(*args)
        tokens, mask = fusion_tokens_forward(*args)
        ctx.mark_non_differentiable(mask)
        return tokens, mask

    @staticmethod
    def backward(ctx, grad, _):
        from ..triton.fusion_tokens import fusion_tokens_backward

        args = ctx.saved_tensors
        g_hr, g_s2, g_s1, g_t = fusion_tokens_backward(grad, *args)
        table = args[8]
        keep = lambda g, t: None if t is None else g  # noqa: E731
        return (keep(g_hr, args[0]), keep(g_s2, args[1]), keep(g_s1, args[2]), None, None, None, None, None,
                None if table is None else g_t.reshape(table.shape).to(table.dtype))


def _register() -> None:
    if _lib.load_error() is not None:
        return

    @torch.library.impl("skysense::fusion_tokens", "CUDA")
    def _cuda(*args):
        _lib.native().fusion_tokens_check(*args)
        if select("fusion_tokens", torch.device("cuda"), IMPLEMENTED, CUDA_ORDER) == "reference":
            tokens, mask = fusion_tokens_reference(*args)
            return tokens.contiguous(), mask.contiguous()
        from ..triton.fusion_tokens import fusion_tokens_forward

        return fusion_tokens_forward(*args)

    @torch.library.impl("skysense::fusion_tokens_backward", "CUDA")
    def _cuda_backward(grad, *args):
        from ..triton.fusion_tokens import fusion_tokens_backward

        return fusion_tokens_backward(grad, *args)

    def _shape(hr, s2, s1):
        x5 = [t if t.dim() == 5 else t.unsqueeze(1) for t in (hr, s2, s1) if t is not None]
        if not x5:
            raise InputError("fusion_tokens: at least one of hr, s2, s1 must be given")
        B, _, C, h, w = x5[0].shape
        return x5[0], B * h * w, sum(t.shape[1] for t in x5), C

    @torch.library.register_fake("skysense::fusion_tokens")
    def _fake(hr, s2, s1, doy_hr=None, doy_s2=None, doy_s1=None, valid_s2=None, valid_s1=None, date_table=None):
        named = dict(hr=hr, s2=s2, s1=s1, doy_hr=doy_hr, doy_s2=doy_s2, doy_s1=doy_s1, valid_s2=valid_s2,
                     valid_s1=valid_s1, date_table=date_table)
        present = [n for n in ("hr", "s2", "s1") if named[n] is not None]
        if present:  # none present: _shape raises the usual error
            same_device("fusion_tokens", present[0], named)
        x, n, L, C = _shape(hr, s2, s1)
        return x.new_empty((n, L, C)), x.new_empty((n, L), dtype=torch.bool)

    @torch.library.register_fake("skysense::fusion_tokens_backward")
    def _fake_backward(grad, hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, date_table):
        same_device("fusion_tokens_backward", "grad", dict(grad=grad, hr=hr, s2=s2, s1=s1, doy_hr=doy_hr,
                                                           doy_s2=doy_s2, doy_s1=doy_s1, valid_s2=valid_s2,
                                                           valid_s1=valid_s1, date_table=date_table))
        acc = acc_dtype(grad.dtype)
        like = lambda t: grad.new_empty((0,)) if t is None else torch.empty_like(t)  # noqa: E731
        table = grad.new_empty((0,)) if date_table is None else grad.new_empty((DATE_TABLE_DAYS, grad.shape[-1]), dtype=acc)
        return like(hr), like(s2), like(s1), table

    def _setup(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_tokens, grad_mask):
        hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, table = ctx.saved_tensors
        g_hr, g_s2, g_s1, g_t = torch.ops.skysense.fusion_tokens_backward(
            grad_tokens, hr, s2, s1, doy_hr, doy_s2, doy_s1, valid_s2, valid_s1, table)
        maybe = lambda g, t: None if t is None or g.numel() == 0 and t.numel() != 0 else g  # noqa: E731
        g_t = None if table is None else g_t.reshape(table.shape).to(table.dtype)
        return maybe(g_hr, hr), maybe(g_s2, s2), maybe(g_s1, s1), None, None, None, None, None, g_t

    torch.library.register_autograd("skysense::fusion_tokens", _backward, setup_context=_setup)


_register()
