"""Multimodal fusion token assembly (``torch.ops.skysense.fusion_tokens``).

SkySense fuses the modalities per pixel of the common feature grid: the HR token, every
Sentinel-2 acquisition and every Sentinel-1 acquisition of that pixel form one sequence,
with a learned day-of-year embedding added. Eagerly that is permute + cat + index + add over
the whole feature volume (several passes); here it is one blocked transpose per frame.

Pieces: schemas and CPU kernels (forward, backward) in ``csrc/fusion_tokens/``; the CUDA
kernels in ``skysense_fast.triton.fusion_tokens``; fake kernels and backends here, the rest
derived from the schema (:mod:`.fused_op`);
:func:`fusion_tokens_reference`, the specification.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _lib
from ..errors import InputError
from ._dtypes import acc_dtype, same_device
from .fused_op import Backend, FusedOp, Inputs, grid_limits

__all__ = ["fusion_tokens", "fusion_tokens_reference"]

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
    for name, x, doy, valid in (("doy_hr", None if hr is None else hr.unsqueeze(1),
                                 None if doy_hr is None else doy_hr.reshape(-1, 1), None),
                                ("doy_s2", s2, doy_s2, valid_s2), ("doy_s1", s1, doy_s1, valid_s1)):
        if x is None:
            continue
        B, T, C, h, w = x.shape
        tok = x.permute(0, 3, 4, 1, 2)  # (B, h, w, T, C)
        if doy is not None:
            if table is None:   # the kernels' check, for the reference run without them
                raise InputError(f"fusion_tokens: {name} given but date_table is None")
            tok = tok + table[doy.long().clamp(1, DATE_TABLE_DAYS) - 1].to(tok.dtype)[:, None, None]
        if valid is not None:
            tok = tok * valid[:, None, None, :, None].to(tok.dtype)
        tokens.append(tok.reshape(B * h * w, T, C))
        invalid = torch.zeros(B, T, dtype=torch.bool, device=x.device) if valid is None else ~valid
        masks.append(invalid[:, None].expand(B, h * w, T).reshape(B * h * w, T))
    return torch.cat(tokens, 1), torch.cat(masks, 1)


def _check(a: Inputs) -> None:
    _lib.native().fusion_tokens_check(*FUSION.forward_args(a).values())


def _features(a: Inputs) -> list[Tensor]:  # the present modalities as (B, T, C, h, w)
    x5 = [t if t.dim() == 5 else t.unsqueeze(1) for t in (a.hr, a.s2, a.s1) if t is not None]
    if not x5:
        raise InputError("fusion_tokens: at least one of hr, s2, s1 must be given")
    return x5


def _triton_limits(a: Inputs) -> str | None:
    x = _features(a)[0]
    if x.dtype == torch.float64:
        return "float64 is not supported (float32, bfloat16, float16)"
    B, _, C, h, w = x.shape
    return grid_limits(("pixel blocks", -(-h * w // 32), 65535), ("channel blocks", -(-C // 64), 65535))


def _triton_forward(a: Inputs) -> tuple[Tensor, Tensor]:
    from ..triton.fusion_tokens import fusion_tokens_forward  # lazy: TRITON_INTERPRET

    _check(a)
    return fusion_tokens_forward(*FUSION.forward_args(a).values())


def _triton_backward(a: Inputs) -> tuple[Tensor, ...]:
    from ..triton.fusion_tokens import fusion_tokens_backward

    return fusion_tokens_backward(a.grad_tokens, *FUSION.forward_args(a).values())


def _fake(a: Inputs) -> tuple[Tensor, Tensor]:
    present = [n for n in ("hr", "s2", "s1") if a[n] is not None]
    if present:  # none present: _features raises the usual error
        same_device("fusion_tokens", present[0], a)
    x5 = _features(a)
    B, _, C, h, w = x5[0].shape
    n, L = B * h * w, sum(t.shape[1] for t in x5)
    return x5[0].new_empty((n, L, C)), x5[0].new_empty((n, L), dtype=torch.bool)


def _fake_backward(a: Inputs) -> tuple[Tensor, ...]:
    grad = a.grad_tokens
    same_device("fusion_tokens_backward", "grad_tokens", a)
    like = lambda t: grad.new_empty((0,)) if t is None else torch.empty_like(t)  # noqa: E731
    table = grad.new_empty((0,)) if a.date_table is None else \
        grad.new_empty((DATE_TABLE_DAYS, grad.shape[-1]), dtype=acc_dtype(grad.dtype))
    return like(a.hr), like(a.s2), like(a.s1), table


FUSION = FusedOp("fusion_tokens", reference=fusion_tokens_reference, fake=_fake, fake_backward=_fake_backward,
                 check=_check, gpu_order=("triton",),
                 backends=(Backend("cpp", ("cpu",)),
                           Backend("triton", ("cuda",), _triton_limits, _triton_forward, _triton_backward)))


@FUSION.entry
def fusion_tokens(hr: Tensor | None = None, s2: Tensor | None = None, s1: Tensor | None = None, *,
                  doy_hr: Tensor | None = None, doy_s2: Tensor | None = None, doy_s1: Tensor | None = None,
                  valid_s2: Tensor | None = None, valid_s1: Tensor | None = None,
                  date_table: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fused :func:`fusion_tokens_reference`; differentiable in the features and the table."""
    if all(x is None for x in (hr, s2, s1)):
        raise InputError("fusion_tokens: at least one of hr, s2, s1 must be given")
    return FUSION.call(locals())
