"""skysense::window_attention (+ backward) against its reference, across backends and shapes."""

from __future__ import annotations

import pytest
import torch

import skysense_fast
from skysense_fast.backends import triton_interpreted
from skysense_fast.ops import window_attention, window_attention_reference

# (B, H, W, heads, head_dim, window, shift): odd maps (padding), windows 2..16, odd head dims
CASES = [
    (2, 8, 8, 2, 5, (4, 4), (0, 0)),
    (2, 8, 8, 2, 5, (4, 4), (2, 2)),
    (1, 9, 11, 3, 7, (4, 4), (2, 1)),
    (1, 16, 16, 2, 44, (8, 8), (4, 4)),   # SwinV2-H: window 8, head dim 44
    (2, 7, 7, 1, 3, (7, 7), (0, 0)),
    (1, 10, 13, 2, 6, (3, 5), (1, 2)),
    (1, 14, 14, 1, 8, (7, 7), (3, 3)),
    (1, 12, 12, 1, 4, (12, 12), (0, 0)),
    (1, 17, 16, 1, 4, (16, 16), (8, 8)),
    (1, 5, 6, 2, 3, (2, 3), (1, 0)),
]
IDS = ["x".join(map(str, c[:5])) + f"-w{c[5][0]}x{c[5][1]}-s{c[6][0]}x{c[6][1]}" for c in CASES]
MODES = ["v1", "v1_bias", "v2_bias", "v2_bias_mask"]


def make(case, mode, dtype=torch.float64, gen=None, requires_grad=True):
    B, H, W, nh, hd, win, shift = case
    g = gen or torch.Generator().manual_seed(0)
    N = win[0] * win[1]
    q, k, v = (torch.randn(B, H, W, nh, hd, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
               for _ in range(3))
    kw = {}
    if mode.startswith("v2"):
        kw["logit_scale"] = (torch.rand(nh, 1, 1, generator=g, dtype=torch.float64) * 4 + 1).to(dtype)
        kw["logit_scale"].view(-1)[0] = 5.0  # above the log(100) clamp: no gradient there
        kw["logit_scale"].requires_grad_(requires_grad)
    if "bias" in mode:
        kw["bias"] = (16 * torch.rand(nh, N, N, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)
    if "mask" in mode:
        kw["mask"] = torch.where(torch.rand(3, N, N, generator=g) > 0.7, -100.0, 0.0).to(dtype)
    return (q, k, v), kw


def run_both(backend, case, mode, dtype):
    (q, k, v), kw = make(case, mode, dtype)
    win, shift = case[5], case[6]
    with skysense_fast.use_backend(backend):
        out = window_attention(q, k, v, win, shift, **kw)
    # the reference sees the same (rounded) values, in float64
    up = lambda t: t.detach().double().requires_grad_(t.requires_grad)  # noqa: E731
    q2, k2, v2 = up(q), up(k), up(v)
    kw2 = {n: up(t) for n, t in kw.items()}
    ref = window_attention_reference(q2, k2, v2, win, shift, **kw2)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = [q, k, v] + [kw[n] for n in ("logit_scale", "bias") if n in kw]
    params2 = [q2, k2, v2] + [kw2[n] for n in ("logit_scale", "bias") if n in kw2]
    grads = torch.autograd.grad(out, params, go.to(dtype))
    grads2 = torch.autograd.grad(ref, params2, go)
    return out, ref, grads, grads2


TOL = {torch.float64: (1e-10, 1e-10, 1e-9), torch.float32: (2e-5, 1e-4, 2e-4), torch.bfloat16: (3e-2, 1e-1, 2e-1)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_cpp_matches_reference(case, mode, dtype, poisoned):
    out, ref, grads, grads2 = run_both("cpp", case, mode, dtype)
    fwd_tol, bwd_rtol, bwd_atol = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=fwd_tol, atol=fwd_tol)
    for g1, g2 in zip(grads, grads2):
        torch.testing.assert_close(g1.double(), g2, rtol=bwd_rtol, atol=bwd_atol * max(1.0, g2.abs().max().item()))


def test_strided_views_of_one_qkv_tensor(poisoned):
    # q, k, v as views into one (B, H, W, 3, heads, hd) projection, as the modules pass them
    qkv = torch.randn(2, 9, 10, 3, 2, 6, dtype=torch.float64, requires_grad=True)
    q, k, v = qkv.unbind(3)
    assert not q.is_contiguous()
    bias = torch.rand(2, 16, 16, dtype=torch.float64)
    out = window_attention(q, k, v, 4, 2, bias=bias)
    assert out.is_contiguous()
    qkv2 = qkv.detach().clone().requires_grad_()
    ref = window_attention_reference(*[t.contiguous() for t in qkv2.unbind(3)], (4, 4), (2, 2), bias=bias)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, qkv, g)[0], torch.autograd.grad(ref, qkv2, g)[0],
                               rtol=1e-9, atol=1e-9)


def test_bfloat16_accepted():
    out, ref, grads, grads2 = run_both("cpp", CASES[3], "v2_bias", torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("mode", ["v1_bias", "v2_bias_mask"])
def test_gradcheck_cpp(mode):
    case = (1, 5, 6, 2, 3, (2, 3), (1, 1))
    (q, k, v), kw = make(case, mode)
    names = [n for n in ("logit_scale", "bias") if n in kw]
    if "logit_scale" in kw:
        kw["logit_scale"].data.view(-1)[0] = 2.0  # keep away from the clamp's kink

    def f(q, k, v, *aux):
        extra = dict(zip(names, aux))
        return window_attention(q, k, v, case[5], case[6], mask=kw.get("mask"), **extra)

    assert torch.autograd.gradcheck(f, (q, k, v, *[kw[n] for n in names]), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["v1_bias", "v2_bias_mask"])
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[7], CASES[8], CASES[9]],
                         ids=[IDS[1], IDS[2], IDS[7], IDS[8], IDS[9]])
def test_triton_matches_reference(case, mode):
    """Windows 12 and 16 (N = 144, 256) run in several 64-wide key / query blocks."""
    if not triton_interpreted():
        pytest.skip("Triton runs on the GPU on this machine (see the gpu tests)")
    out, ref, grads, grads2 = run_both("triton", case, mode, torch.float32)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
    for g1, g2 in zip(grads, grads2):
        torch.testing.assert_close(g1.double(), g2, rtol=1e-4, atol=2e-4 * max(1.0, g2.abs().max().item()))


def test_triton_reads_strided_views_of_one_projection():
    """q, k, v as views of one (B, H, W, 3, heads, hd) projection: read in place, same result
    as on contiguous copies, and the bias gradient is bit-identical from run to run."""
    if not triton_interpreted():
        pytest.skip("Triton runs on the GPU on this machine (see the gpu tests)")
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(1, 9, 10, 3, 2, 6, generator=g)
    ls = torch.tensor([1.5, 2.5]).view(2, 1, 1).requires_grad_()
    bias = torch.randn(2, 16, 16, generator=g).requires_grad_()
    views = qkv.unbind(3)
    assert not views[0].is_contiguous()
    with skysense_fast.use_backend("triton"):
        out = window_attention(*views, 4, 2, logit_scale=ls, bias=bias)
        go = torch.randn(out.shape, generator=g)
        db1, = torch.autograd.grad(out, bias, go)
        db2, = torch.autograd.grad(window_attention(*views, 4, 2, logit_scale=ls, bias=bias), bias, go)
    ref = window_attention_reference(*(t.contiguous() for t in views), (4, 4), (2, 2), logit_scale=ls, bias=bias)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)
    assert torch.equal(db1, db2)
    torch.testing.assert_close(db1, torch.autograd.grad(ref, bias, go)[0], rtol=1e-4, atol=1e-4)


def test_opcheck():
    (q, k, v), kw = make(CASES[2], "v2_bias_mask", torch.float32, requires_grad=False)
    args = (q, k, v, [4, 4], [2, 1], kw["logit_scale"], kw["bias"], kw["mask"], None)
    torch.library.opcheck(torch.ops.skysense.window_attention.default, args)
    (q, k, v), kw = make(CASES[0], "v1", torch.float64, requires_grad=False)
    torch.library.opcheck(torch.ops.skysense.window_attention.default, (q, k, v, [4, 4], [0, 0], None, None, None, 0.3))
    out, lse = torch.ops.skysense.window_attention(q, k, v, [4, 4], [0, 0], None, None, None, 0.3)
    torch.library.opcheck(torch.ops.skysense.window_attention_backward.default,
                          (torch.randn_like(out), q, k, v, out, lse, [4, 4], [0, 0], None, None, None, 0.3))


def test_torch_compile_and_export():
    import torch._dynamo

    torch._dynamo.reset()
    (q, k, v), kw = make(CASES[1], "v2_bias", torch.float32, requires_grad=False)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(q, k, v, ls, b):
        return window_attention(q * 1.0, k, v, 4, 2, logit_scale=ls, bias=b)

    torch.testing.assert_close(f(q, k, v, kw["logit_scale"], kw["bias"]),
                               window_attention(q, k, v, 4, 2, logit_scale=kw["logit_scale"], bias=kw["bias"]))

    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.skysense.window_attention(q, k, v, [4, 4], [2, 2], None, None, None, None)[0]

    ep = torch.export.export(M(), (q, k, v))
    torch.testing.assert_close(ep.module()(q, k, v), M()(q, k, v))
    torch.testing.assert_close(torch.jit.script(M())(q, k, v), M()(q, k, v))


BAD = [
    (lambda q, k, v: (q[0], k[0], v[0], 4, 0, {}), "must have shape \\(B, H, W, heads, head_dim\\)"),
    (lambda q, k, v: (q, k[:, :4], v, 4, 0, {}), "same shape"),
    (lambda q, k, v: (q, k.double(), v, 4, 0, {}), "same dtype"),
    (lambda q, k, v: (q.long(), k.long(), v.long(), 4, 0, {}), "must be float32"),
    (lambda q, k, v: (q, k, v, 9, 0, {}), "larger than the map"),
    (lambda q, k, v: (q, k, v, 4, 4, {}), "0 <= shift < window"),
    (lambda q, k, v: (q, k, v, 4, -1, {}), "0 <= shift < window"),
    (lambda q, k, v: (q, k, v, 4, 2, {"bias": torch.zeros(2, 16, 15)}), "bias must have shape \\(heads, N, N\\)"),
    (lambda q, k, v: (q, k, v, 4, 2, {"logit_scale": torch.zeros(3)}), "logit_scale must have one entry per head"),
    (lambda q, k, v: (q, k, v, 4, 2, {"mask": torch.zeros(2, 16)}), "mask must have shape"),
    (lambda q, k, v: (q, k, v, (4, 4, 4), 0, {}), "window must be an int or two ints"),
]


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(backend, case):
    q, k, v = (torch.randn(1, 8, 8, 2, 3) for _ in range(3))
    qq, kk, vv, win, shift, kw = BAD[case][0](q, k, v)
    with pytest.raises(ValueError, match=BAD[case][1]):
        with skysense_fast.use_backend(backend):
            window_attention(qq, kk, vv, win, shift, **kw)


GPU_CASES = [2, 3, 7, 8]  # odd map + shift, SwinV2-H (window 8, head dim 44), windows 12 and 16


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["v1_bias", "v2_bias_mask"])
@pytest.mark.parametrize("case", [CASES[i] for i in GPU_CASES], ids=[IDS[i] for i in GPU_CASES])
def test_gpu_triton_matches_reference(case, mode):
    """A few shapes, each a handful of fresh compilations: the GPU check has minutes, and the
    interpreter tests above cover the rest of the grid."""
    (q, k, v), kw = make(case, mode, torch.float32)
    win, shift = case[5], case[6]
    to_gpu = lambda t: t.detach().cuda().requires_grad_(t.requires_grad)  # noqa: E731
    qc, kc, vc = to_gpu(q), to_gpu(k), to_gpu(v)
    kwc = {n: to_gpu(t) for n, t in kw.items()}
    out = window_attention(qc, kc, vc, win, shift, **kwc)
    ref = window_attention_reference(q, k, v, win, shift, **kw)
    torch.testing.assert_close(out.cpu(), ref.float(), rtol=2e-5, atol=2e-5)
    go = torch.randn_like(ref)
    names = [n for n in ("logit_scale", "bias") if n in kw]
    grads = torch.autograd.grad(out, [qc, kc, vc] + [kwc[n] for n in names], go.cuda())
    refg = torch.autograd.grad(ref, [q, k, v] + [kw[n] for n in names], go)
    for g1, g2 in zip(grads, refg):
        torch.testing.assert_close(g1.cpu(), g2, rtol=1e-4, atol=2e-4 * max(1.0, g2.abs().max().item()))
