"""skysense::fusion_tokens (+ backward) against its reference."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import skysense_fast
from skysense_fast.ops import fusion_tokens, fusion_tokens_reference


def make(B=2, C=7, h=3, w=5, T1=4, T2=3, dtype=torch.float64, gen=None, hr=True, s2=True, s1=True, dates=True,
         padded=True):
    g = gen or torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()  # noqa: E731
    kw = {}
    if hr:
        kw["hr"] = r(B, C, h, w)
    if s2:
        kw["s2"] = r(B, T1, C, h, w)
    if s1:
        kw["s1"] = r(B, T2, C, h, w)
    if dates:
        kw["date_table"] = r(1, 365, C)
        if hr:
            kw["doy_hr"] = torch.randint(1, 367, (B,), generator=g)
        if s2:
            kw["doy_s2"] = torch.randint(1, 367, (B, T1), generator=g)
    if padded:
        if s2:
            kw["valid_s2"] = torch.rand(B, T1, generator=g) > 0.3
            kw["doy_s2"] = torch.where(kw["valid_s2"], kw["doy_s2"], 0) if "doy_s2" in kw else None
        if s1:
            kw["valid_s1"] = torch.rand(B, T2, generator=g) > 0.3
    return {k: v for k, v in kw.items() if v is not None}


def check(kw, backend="cpp", tol=1e-12):
    with skysense_fast.use_backend(backend):
        tok, mask = fusion_tokens(**kw)
    up = {k: (v.detach().double().requires_grad_() if v.is_floating_point() else v) for k, v in kw.items()}
    ref, ref_mask = fusion_tokens_reference(**up)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(tok.double(), ref, rtol=tol, atol=tol)
    diff = [k for k, v in kw.items() if v.is_floating_point()]
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ga = torch.autograd.grad(tok, [kw[k] for k in diff], g.to(tok.dtype))
    gb = torch.autograd.grad(ref, [up[k] for k in diff], g, allow_unused=True)  # an unused table: no grad
    gb = [torch.zeros_like(up[k]) if b is None else b for k, b in zip(diff, gb)]
    for k, a, b in zip(diff, ga, gb):
        torch.testing.assert_close(a.double(), b, rtol=20 * tol, atol=20 * tol * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("mods", ["hr+s2+s1", "s2", "hr", "s1", "hr+s1", "s2+s1"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_cpp_matches_reference(mods, padded, poisoned):
    kw = make(hr="hr" in mods, s2="s2" in mods, s1="s1" in mods, padded=padded)
    check(kw)
    tok, _ = fusion_tokens(**kw)
    assert tok.shape == (2 * 3 * 5, ("hr" in mods) + 4 * ("s2" in mods) + 3 * ("s1" in mods), 7)


@pytest.mark.parametrize("mods", ["hr+s2+s1", "s2+s1"])
def test_triton_matches_reference(mods):
    from skysense_fast.backends import triton_interpreted

    if not triton_interpreted():
        pytest.skip("Triton runs on the GPU on this machine (see the gpu tests)")
    kw = make(C=20, h=3, w=5, dtype=torch.float32, hr="hr" in mods)
    check(kw, backend="triton", tol=1e-6)


def test_float32_bfloat16_and_large_blocks():
    check(make(C=70, h=9, w=40, dtype=torch.float32), tol=1e-6)
    kw = make(C=40, dtype=torch.bfloat16)
    tok, _ = fusion_tokens(**kw)
    ref, _ = fusion_tokens_reference(**kw)
    torch.testing.assert_close(tok.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_day_366_uses_day_365():
    kw = make(hr=False, s1=False, padded=False)
    kw["doy_s2"] = torch.full((2, 4), 366)
    tok366, _ = fusion_tokens(**kw)
    kw["doy_s2"] = torch.full((2, 4), 365)
    torch.testing.assert_close(tok366, fusion_tokens(**kw)[0])


def test_opcheck_compile():
    kw = {k: (v.detach() if v.is_floating_point() else v) for k, v in make(dtype=torch.float32).items()}
    args = [kw.get(n) for n in ("hr", "s2", "s1", "doy_hr", "doy_s2", "doy_s1", "valid_s2", "valid_s1", "date_table")]
    torch.library.opcheck(torch.ops.skysense.fusion_tokens.default, tuple(args))
    torch._dynamo.reset()
    f = torch.compile(lambda kw: fusion_tokens(**kw)[0] * 1.0, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(kw), fusion_tokens(**kw)[0])


BAD = [
    (dict(), "at least one of hr, s2, s1"),
    (dict(hr=torch.zeros(2, 7, 3)), "hr must have shape \\(B, C, h, w\\)"),
    (dict(hr=torch.zeros(2, 7, 3, 5), s2=torch.zeros(2, 4, 7, 3, 6)), "s2 is on a 3x6 grid"),
    (dict(hr=torch.zeros(2, 7, 3, 5), s1=torch.zeros(2, 4, 8, 3, 5)), "batch size and channels"),
    (dict(s2=torch.zeros(2, 4, 7, 3, 5), doy_s2=torch.full((2, 4), 400), date_table=torch.zeros(365, 7)),
     "days of year in 1..366"),
    (dict(s2=torch.zeros(2, 4, 7, 3, 5), doy_s2=torch.zeros(2, 4, dtype=torch.long), date_table=torch.zeros(365, 7)),
     "days of year in 1..366 for every valid acquisition, got 0"),
    (dict(s2=torch.zeros(2, 4, 7, 3, 5), doy_s2=torch.ones(2, 3, dtype=torch.long), date_table=torch.zeros(365, 7)),
     "doy_s2 must have shape"),
    (dict(s2=torch.zeros(2, 4, 7, 3, 5), doy_s2=torch.ones(2, 4, dtype=torch.long)), "date_table is None"),
    (dict(s2=torch.zeros(2, 4, 7, 3, 5), valid_s2=torch.ones(2, 5, dtype=torch.bool)), "valid_s2 must have shape"),
    (dict(s2=torch.zeros(2, 4, 7, 3, 5), date_table=torch.zeros(364, 7)), "date_table must have shape"),
    (dict(s1=torch.zeros(2, 4, 7, 3, 5), doy_s2=torch.ones(2, 4, dtype=torch.long)), "doy_s2 given but s2 is absent"),
]


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(backend, case):
    kw, msg = BAD[case]
    with pytest.raises(ValueError, match=msg):
        with skysense_fast.use_backend(backend):
            fusion_tokens(**kw)


@pytest.mark.gpu
def test_gpu_matches_reference():
    kw = make(dtype=torch.float32)
    kwc = {k: (v.detach().cuda().requires_grad_() if v.is_floating_point() else v.cuda()) for k, v in kw.items()}
    tok, mask = fusion_tokens(**kwc)
    ref, ref_mask = fusion_tokens_reference(**kw)
    torch.testing.assert_close(tok.cpu(), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(mask.cpu(), ref_mask)


def test_gradcheck_cpp():
    kw = make(B=1, C=3, h=2, w=2, T1=2, T2=1)
    names = [k for k, v in kw.items() if v.is_floating_point()]
    rest = {k: v for k, v in kw.items() if k not in names}

    def f(*xs):
        return fusion_tokens(**dict(zip(names, xs)), **rest)[0]

    assert torch.autograd.gradcheck(f, tuple(kw[n] for n in names), eps=1e-6, atol=1e-6)
