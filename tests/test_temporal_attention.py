"""skysense::temporal_attention (+ backward) against its reference."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

import skysense_fast
from skysense_fast.backends import triton_interpreted
from skysense_fast.ops import temporal_attention, temporal_attention_reference

# (S, heads, T, head_dim): T from 1 to 128, odd head dims
CASES = [(5, 2, 1, 8), (7, 3, 31, 5), (4, 2, 12, 64), (3, 1, 128, 16), (9, 4, 17, 3)]
IDS = ["x".join(map(str, c)) for c in CASES]


def make(case, dtype, masked, gen, layout="sdpa"):
    S, nh, T, hd = case
    if layout == "sdpa":
        q, k, v = (torch.randn(S, nh, T, hd, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    else:  # views of one (S, T, 3, heads, hd) projection, as the fusion module passes them
        qkv = torch.randn(S, T, 3, nh, hd, generator=gen, dtype=torch.float64).to(dtype)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    mask = None
    if masked:
        mask = torch.rand(S, T, generator=gen) > 0.6
        mask[:, 0] = False  # every sequence keeps a key (the class token in the fusion)
    return [t.requires_grad_() for t in (q, k, v)], mask


def check(backend, case, dtype, masked, layout="sdpa", tol=(1e-10, 1e-9)):
    gen = torch.Generator().manual_seed(0)
    (q, k, v), mask = make(case, dtype, masked, gen, layout)
    with skysense_fast.use_backend(backend):
        out = temporal_attention(q, k, v, mask)
    up = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = temporal_attention_reference(*up, mask)
    torch.testing.assert_close(out.double(), ref, rtol=tol[0], atol=tol[0])
    go = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    for g1, g2 in zip(torch.autograd.grad(out, (q, k, v), go.to(dtype)), torch.autograd.grad(ref, up, go)):
        torch.testing.assert_close(g1.double(), g2, rtol=tol[1], atol=tol[1] * max(1.0, g2.abs().max().item()))


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cpp_matches_reference(case, dtype, masked, poisoned):
    check("cpp", case, dtype, masked, tol=(1e-10, 1e-9) if dtype == torch.float64 else (2e-5, 1e-4))


def test_strided_projection_views_and_output_layout():
    check("cpp", CASES[1], torch.float64, True, layout="views")
    q = torch.randn(3, 2, 5, 4)
    out = temporal_attention(q, q, q)
    assert out.shape == (3, 2, 5, 4) and out.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_packed_qkv_matches(backend, poisoned):
    from skysense_fast.ops import temporal_attention_qkv

    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(6, 9, 3, 2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(6, 9, generator=gen) > 0.6
    mask[:, 0] = False
    with skysense_fast.use_backend(backend):
        out = temporal_attention_qkv(qkv, mask)
    qkv2 = qkv.detach().clone().requires_grad_()
    ref = temporal_attention_reference(*[t.transpose(1, 2) for t in qkv2.unbind(2)], mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, qkv, g)[0], torch.autograd.grad(ref, qkv2, g)[0],
                               rtol=1e-9, atol=1e-9)
    if backend == "cpp":
        torch.library.opcheck(torch.ops.skysense.temporal_attention_qkv.default, (qkv.detach(), mask, None))
        assert torch.autograd.gradcheck(lambda x: temporal_attention_qkv(x, mask[:2, :4]),
                                        (qkv[:2, :4].detach().requires_grad_(),))
    with pytest.raises(ValueError, match="qkv must have shape"):
        temporal_attention_qkv(qkv[:, :, :2])


def test_gradcheck_cpp():
    gen = torch.Generator().manual_seed(0)
    (q, k, v), mask = make((3, 2, 5, 3), torch.float64, True, gen)
    assert torch.autograd.gradcheck(lambda q, k, v: temporal_attention(q, k, v, mask), (q, k, v), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=[IDS[1], IDS[4]])
def test_triton_matches_reference(case, masked):
    if not triton_interpreted():
        pytest.skip("Triton runs on the GPU on this machine (see the gpu tests)")
    check("triton", case, torch.float32, masked, tol=(2e-5, 1e-4))
    check("triton", case, torch.float32, masked, layout="views", tol=(2e-5, 1e-4))


def test_triton_long_sequences_and_ignored_nan_keys():
    """T past one 64-wide key block (several query and key tiles), and a NaN in a key that
    key_padding_mask ignores: it stays out of the result and the gradients, as in the
    reference (the kernel once added -inf to NaN scores and multiplied NaN values by 0)."""
    if not triton_interpreted():
        pytest.skip("Triton runs on the GPU on this machine (see the gpu tests)")
    g = torch.Generator().manual_seed(5)
    S, heads, T, hd = 2, 1, 100, 4
    proj = torch.randn(S, T, 3, heads, hd, generator=g)
    mask = torch.rand(S, T, generator=g) > 0.7
    mask[:, 0] = False
    nan_kv = mask[:, :, None, None, None] & (torch.arange(3) > 0)[None, None, :, None, None]
    proj = torch.where(nan_kv, float("nan"), proj).requires_grad_()  # ignored keys' k and v are NaN
    q, k, v = (t.transpose(1, 2) for t in proj.unbind(2))
    with skysense_fast.use_backend("triton"):
        out = temporal_attention(q, k, v, mask)
    clean = torch.where(nan_kv, 0.0, proj.detach()).requires_grad_()
    ref = temporal_attention_reference(*(t.transpose(1, 2) for t in clean.unbind(2)), mask)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    go = torch.randn(out.shape, generator=g)
    grad, = torch.autograd.grad(out, proj, go)
    grad_ref, = torch.autograd.grad(ref, clean, go)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)  # finite, 0 for the ignored keys


def test_opcheck_compile_export():
    gen = torch.Generator().manual_seed(0)
    (q, k, v), mask = make(CASES[1], torch.float32, True, gen)
    q, k, v = (t.detach() for t in (q, k, v))
    torch.library.opcheck(torch.ops.skysense.temporal_attention.default, (q, k, v, mask, None))
    out, lse = torch.ops.skysense.temporal_attention(q, k, v, mask, 0.3)
    torch.library.opcheck(torch.ops.skysense.temporal_attention_backward.default,
                          (torch.randn_like(q), q, k, v, out, lse, mask, 0.3))
    torch._dynamo.reset()
    f = torch.compile(lambda q, k, v: temporal_attention(q * 1.0, k, v, mask), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(q, k, v), temporal_attention(q, k, v, mask))

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.skysense.temporal_attention(q, k, v, None, None)[0]

    torch.testing.assert_close(torch.export.export(M(), (q, k, v)).module()(q, k, v), M()(q, k, v))


BAD = [
    (lambda q, m: (q[0], q[0], q[0], None), "must have shape \\(S, heads, T, head_dim\\)"),
    (lambda q, m: (q, q[:, :1], q, None), "same shape"),
    (lambda q, m: (q, q.double(), q, None), "same dtype"),
    (lambda q, m: (q.long(), q.long(), q.long(), None), "must be float32"),
    (lambda q, m: (q, q, q, m[:, :3]), "key_padding_mask must have shape \\(S, T\\)"),
    (lambda q, m: (q, q, q, m.float()), "key_padding_mask must be bool"),
    (lambda q, m: (q, q, q, torch.ones_like(m)), "ignores every key of sequence 0"),
]


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(backend, case):
    q = torch.randn(3, 2, 5, 4)
    m = torch.zeros(3, 5, dtype=torch.bool)
    args = BAD[case][0](q, m)
    with pytest.raises(ValueError, match=BAD[case][1]):
        with skysense_fast.use_backend(backend):
            temporal_attention(*args)


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "masked"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_matches_reference(case, masked):
    gen = torch.Generator().manual_seed(0)
    (q, k, v), mask = make(case, torch.float32, masked, gen)
    qc, kc, vc = (t.detach().cuda().requires_grad_() for t in (q, k, v))
    out = temporal_attention(qc, kc, vc, None if mask is None else mask.cuda())
    ref = temporal_attention_reference(q, k, v, mask)
    torch.testing.assert_close(out.cpu(), ref, rtol=2e-5, atol=2e-5)
    go = torch.randn_like(ref)
    for g1, g2 in zip(torch.autograd.grad(out, (qc, kc, vc), go.cuda()), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(g1.cpu(), g2, rtol=1e-4, atol=2e-4 * max(1.0, g2.abs().max().item()))


@pytest.mark.gpu
def test_gpu_more_than_65535_sequences():
    q = torch.randn(70000, 2, 5, 16, device="cuda", dtype=torch.bfloat16)
    out = temporal_attention(q, q, q)
    ref = temporal_attention_reference(q[-100:].float(), q[-100:].float(), q[-100:].float())
    torch.testing.assert_close(out[-100:].float(), ref, rtol=2e-2, atol=2e-2)
