"""Property-based tests of the public ops against their references (hypothesis): random
shapes, layouts (views of one projection, transposed, expanded), dtypes, masks and special
values. Each example must equal the reference (NaN where the reference has NaN), or raise a
ValueError where the reference cannot run either: never a crash, never another answer.

Derandomised, so CI sees the same examples every run; SKYSENSE_FUZZ_EXAMPLES scales them."""

from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import skysense_fast  # noqa: E402
from skysense_fast.ops import (  # noqa: E402
    fusion_tokens,
    fusion_tokens_reference,
    sinkhorn_reference,
    temporal_attention,
    temporal_attention_reference,
    window_attention,
    window_attention_reference,
)

EXAMPLES = int(os.environ.get("SKYSENSE_FUZZ_EXAMPLES", "500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def _close(out, ref, dtype):
    torch.testing.assert_close(out.double(), ref.double(), rtol=TOL[dtype], atol=TOL[dtype], equal_nan=True)


def _tensor(draw, shape, dtype, gen, layout):
    """A tensor of `shape` as a contiguous tensor, a transposed copy seen back, or a slice of
    a wider buffer: the same values, other strides."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "transposed" and len(shape) >= 2:
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "sliced":
        wide = torch.zeros(*shape[:-1], shape[-1] + 3, dtype=dtype)
        wide[..., 1:1 + shape[-1]] = x
        return wide[..., 1:1 + shape[-1]]
    return x


@FUZZ
@given(st.data())
def test_window_attention_matches_reference(data):
    d = data.draw
    B, nh, hd = d(st.integers(1, 2)), d(st.integers(1, 3)), d(st.integers(1, 9))
    wh, ww = d(st.integers(1, 6)), d(st.integers(1, 6))
    H, W = d(st.integers(wh, 13)), d(st.integers(ww, 13))
    sh, sw = d(st.integers(0, wh - 1)), d(st.integers(0, ww - 1))
    dtype = d(st.sampled_from([torch.float32, torch.float64]))
    v2, with_bias, with_mask = d(st.booleans()), d(st.booleans()), d(st.booleans())
    special = d(st.sampled_from(["none", "nan q", "inf k", "masked row"]))
    gen = torch.Generator().manual_seed(d(st.integers(0, 2**16)))
    if d(st.booleans()):  # views of one projection, as the module passes them
        q, k, v = _tensor(d, (B, H, W, 3, nh, hd), dtype, gen, "contiguous").unbind(3)
    else:
        q, k, v = (_tensor(d, (B, H, W, nh, hd), dtype, gen, d(st.sampled_from(["contiguous", "transposed"])))
                   for _ in range(3))
    N, nW = wh * ww, -(-H // wh) * -(-W // ww)
    kw = {}
    if v2:
        kw["logit_scale"] = (torch.rand(nh, generator=gen, dtype=torch.float64) * 5).to(dtype)
    if with_bias:
        kw["bias"] = torch.randn(nh, N, N, generator=gen, dtype=torch.float64).to(dtype)
    if with_mask or special == "masked row":
        kw["mask"] = torch.where(torch.rand(nW, N, N, generator=gen) > 0.8, -100.0, 0.0).to(dtype)
    if special == "nan q":
        q = q.clone()
        q[0, 0, 0, 0, 0] = float("nan")
    elif special == "inf k":
        k = k.clone()
        k[-1, -1, -1, -1, -1] = float("inf")
    elif special == "masked row":
        kw["mask"][0, 0] = float("-inf")
    with skysense_fast.use_backend("cpp"):
        out = window_attention(q, k, v, (wh, ww), (sh, sw), **kw)
    ref = window_attention_reference(q, k, v, (wh, ww), (sh, sw), **kw)
    _close(out, ref, dtype)


@FUZZ
@given(st.data())
def test_temporal_attention_matches_reference(data):
    d = data.draw
    S, nh, T, hd = d(st.integers(1, 6)), d(st.integers(1, 3)), d(st.integers(1, 40)), d(st.integers(1, 9))
    dtype = d(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(d(st.integers(0, 2**16)))
    proj = _tensor(d, (S, T, 3, nh, hd), dtype, gen, d(st.sampled_from(["contiguous", "sliced"])))
    q, k, v = (t.transpose(1, 2) for t in proj.unbind(2))
    mask = None
    if d(st.booleans()):
        mask = torch.rand(S, T, generator=gen) > 0.6
        mask[:, d(st.integers(0, T - 1))] = False  # one valid key at least (the reference needs it)
        if d(st.booleans()):  # NaN in an ignored key: stays out
            k, v = k.clone(), v.clone()
            k[mask[:, None, :].expand(S, nh, T)] = float("nan")
            v[mask[:, None, :].expand(S, nh, T)] = float("nan")
    with skysense_fast.use_backend("cpp"):
        out = temporal_attention(q, k, v, mask)
    kc, vc = k, v
    if mask is not None:
        kc = k.masked_fill(mask[:, None, :, None], 0.0)
        vc = v.masked_fill(mask[:, None, :, None], 0.0)
    _close(out, temporal_attention_reference(q, kc, vc, mask), dtype)


@FUZZ
@given(st.data())
def test_sinkhorn_matches_reference(data):
    d = data.draw
    B, N, K = d(st.integers(1, 3)), d(st.integers(1, 40)), d(st.integers(1, 30))
    dtype = d(st.sampled_from([torch.float32, torch.float64]))
    eps, iters = d(st.sampled_from([0.02, 0.05, 0.5, 3.0])), d(st.integers(1, 6))
    gen = torch.Generator().manual_seed(d(st.integers(0, 2**16)))
    layout = d(st.sampled_from(["contiguous", "transposed", "expanded", "sliced"]))
    if layout == "expanded":
        s = torch.randn(B, 1, K, generator=gen, dtype=torch.float64).to(dtype).expand(B, N, K)
    else:
        s = _tensor(d, (B, N, K), dtype, gen, layout)
    if d(st.booleans()) and N > 1 and K > 1:  # some -inf (zero mass), never a whole row or column
        s = s.clone()
        s[0, 0, 0] = float("-inf")
    batched = d(st.booleans()) or B > 1
    s = s if batched else s[0]
    with skysense_fast.use_backend("cpp"):
        q = skysense_fast.sinkhorn(s, eps, iters)
    ref = sinkhorn_reference(s.contiguous(), eps, iters)[0]
    torch.testing.assert_close(q.double(), ref.double(), rtol=1e-4 if dtype == torch.float32 else 1e-9,
                               atol=1e-5 if dtype == torch.float32 else 1e-10)


@FUZZ
@given(st.data())
def test_fusion_tokens_matches_reference(data):
    d = data.draw
    B, C, h, w = d(st.integers(1, 2)), d(st.integers(1, 9)), d(st.integers(1, 5)), d(st.integers(1, 5))
    present = d(st.sampled_from([("hr",), ("s2",), ("hr", "s2"), ("s2", "s1"), ("hr", "s2", "s1")]))
    gen = torch.Generator().manual_seed(d(st.integers(0, 2**16)))
    kw = {}
    if "hr" in present:
        kw["hr"] = torch.randn(B, C, h, w, generator=gen)
    for m in ("s2", "s1"):
        if m in present:
            T = d(st.integers(1, 5))
            kw[m] = _tensor(d, (B, T, C, h, w), torch.float32, gen, d(st.sampled_from(["contiguous", "sliced"])))
            if d(st.booleans()):
                kw[f"doy_{m}"] = torch.randint(1, 367, (B, T), generator=gen)
            if d(st.booleans()):
                kw[f"valid_{m}"] = torch.rand(B, T, generator=gen) > 0.3
    if any(k.startswith("doy_") for k in kw):
        kw["date_table"] = torch.randn(365, C, generator=gen)
    hr, s2, s1 = kw.pop("hr", None), kw.pop("s2", None), kw.pop("s1", None)
    with skysense_fast.use_backend("cpp"):
        tokens, mask = fusion_tokens(hr, s2, s1, **kw)
    rt, rm = fusion_tokens_reference(hr, s2, s1, **kw)
    torch.testing.assert_close(tokens, rt, rtol=1e-6, atol=1e-6)
    assert torch.equal(mask, rm)
