"""skysense::sinkhorn against its float64 reference, across backends, shapes and dtypes."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

import skysense_fast
from skysense_fast.backends import triton_interpreted
from skysense_fast.ops import sinkhorn, sinkhorn_reference

# Max |Q - Q_ref(float64)| allowed, by dtype. Q <= 1 with the default marginals; bf16/fp16
# outputs are rounded to 8 / 11 significant bits.
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 8e-3, torch.float16: 1e-3}

# Shapes (B, N, K), odd sizes included; K crosses the 8/16-lane vector width.
SHAPES = [(1, 1, 1), (1, 7, 3), (2, 37, 13), (3, 64, 17), (1, 513, 100), (4, 100, 33), (2, 5, 129)]


def swav_loop(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """SwAV's exp-domain Sinkhorn (distributed_sinkhorn without the all-reduce), (N, K)."""
    Q = torch.exp(scores / eps).t()
    K, N = Q.shape
    Q = Q / Q.sum()
    for _ in range(iters):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / N
    return (Q * N).t()


def rand_scores(shape, gen, dtype=torch.float32, scale=1.0):
    return ((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(dtype)


def ref64(scores, eps, iters, **kw):
    q, it = sinkhorn_reference(scores.double(), eps, iters, **kw)
    return q, it


# ---------------------------------------------------------------- the reference itself

def test_reference_is_swav_loop(gen):
    s = rand_scores((200, 30), gen, torch.float64)
    for iters in (1, 3, 10):
        q, _ = sinkhorn_reference(s, 0.1, iters)
        torch.testing.assert_close(q, swav_loop(s, 0.1, iters), rtol=1e-10, atol=1e-12)


def test_reference_marginals_hold_after_convergence(gen):
    s = rand_scores((2, 50, 7), gen, torch.float64)
    a = torch.rand(2, 50, generator=gen, dtype=torch.float64) + 0.5
    b = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    b = b / b.sum() * a.sum(1, keepdim=True)
    q, it = sinkhorn_reference(s, 0.1, 500, tol=1e-10, row_marginals=a, col_marginals=b)
    torch.testing.assert_close(q.sum(2), a, rtol=1e-12, atol=1e-12)  # rows are normalised last
    assert ((q.sum(1) - b).abs().sum(1) / b.sum(1) <= 1e-10).all()
    assert (it < 500).all()


# ---------------------------------------------------------------- fused kernels vs reference

def run(backend, *args, **kw):
    if backend == "triton" and args[0].device.type == "cpu" and not triton_interpreted():
        pytest.skip("Triton runs on the GPU on this machine (see the gpu tests)")
    with skysense_fast.use_backend(backend):
        return sinkhorn(*args, return_iters=True, **kw)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).split(".")[1])
def test_cpp_matches_reference(shape, dtype, gen, poisoned):
    s = rand_scores(shape, gen, dtype)
    for eps, iters in [(0.05, 3), (0.02, 1), (0.1, 7)]:
        q, it = run("cpp", s, eps, iters)
        assert q.dtype == dtype and q.shape == s.shape
        q_ref, it_ref = ref64(s, eps, iters)
        assert not torch.isnan(q).any()
        torch.testing.assert_close(q.double(), q_ref, rtol=0, atol=ATOL[dtype])
        assert it.tolist() == it_ref.tolist() == [iters] * shape[0]


def test_unbatched_and_noncontiguous(gen):
    s = rand_scores((40, 60), gen).t()  # (60, 40), not contiguous
    q = sinkhorn(s, 0.05, 3)
    torch.testing.assert_close(q.double(), ref64(s, 0.05, 3)[0], rtol=0, atol=1e-5)
    assert q.shape == (60, 40)


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


@pytest.mark.parametrize("shape", [(2, 37, 13), (1, 9, 130)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("one_tile", [True, False], ids=["one_tile", "k_tiles"])
def test_triton_matches_reference(shape, one_tile, gen, monkeypatch):
    if not triton_interpreted():
        pytest.skip("Triton runs on the GPU on this machine (see the gpu tests)")
    from skysense_fast.triton import sinkhorn as tsk

    # tiny tiles, so that each program walks several row tiles (and, K-tiled, several column
    # tiles) on shapes cheap in the interpreter
    if one_tile:
        monkeypatch.setattr(tsk, "_tiles", lambda B, N, K: (4, triton_next_pow2(K), True, 3))
    else:
        monkeypatch.setattr(tsk, "_tiles", lambda B, N, K: (4, 16, False, 3))
    s = rand_scores(shape, gen)
    for eps, iters in [(0.05, 3), (0.02, 1)]:
        q, it = run("triton", s, eps, iters)
        torch.testing.assert_close(q.double(), ref64(s, eps, iters)[0], rtol=0, atol=1e-5)
        assert it.tolist() == [iters] * shape[0]


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_marginals(backend, gen):
    B, N, K = 2, 30, 11
    s = rand_scores((B, N, K), gen)
    a = torch.rand(B, N, generator=gen) + 0.5
    b = torch.rand(K, generator=gen) + 0.5
    b_full = b / b.sum() * a.sum(1, keepdim=True)
    for kw in [dict(row_marginals=a, col_marginals=b_full), dict(row_marginals=a),
               dict(col_marginals=b * 3.0), dict(row_marginals=a[0])]:
        q, _ = run(backend, s, 0.05, 4, **kw)
        q_ref, _ = ref64(s, 0.05, 4, **{k: v.double() for k, v in kw.items()})
        torch.testing.assert_close(q.double(), q_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_convergence_mode(backend, dtype, gen):
    s = rand_scores((3, 40, 9), gen, dtype)
    tol = 1e-4
    q, it = run(backend, s, 0.1, 200, tol=tol)
    _, it_ref = ref64(s, 0.1, 200, tol=tol)
    assert (it < 200).all() and (it >= 1).all()
    assert (it - it_ref).abs().max() <= 1  # the float32 error may cross tol one step apart
    colmass = q.double().sum(1)
    b = 40 / 9
    err = (colmass - b).abs().sum(1) / (9 * b)
    assert (err <= tol + (5e-3 if dtype == torch.bfloat16 else 1e-5)).all()
    for i in range(3):  # each problem equals the reference run for its own count
        q_i, _ = ref64(s[i], 0.1, int(it[i]))
        torch.testing.assert_close(q[i].double(), q_i, rtol=0, atol=ATOL[dtype])


def test_convergence_mode_long_run_absorbs(gen):
    # Strongly unbalanced marginals move the scaling far from 1: exercises absorption.
    N, K = 64, 5
    s = rand_scores((N, K), gen) * 3
    b = torch.tensor([1e-6, 1e-3, 1.0, 10.0, 50.0])
    b = b / b.sum() * N
    q, it = sinkhorn(s, 0.02, 300, tol=1e-6, col_marginals=b, return_iters=True)
    q_ref, _ = ref64(s, 0.02, int(it), col_marginals=b.double())
    torch.testing.assert_close(q.double(), q_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
def test_out_buffer_is_filled_and_returned(backend, gen, poisoned):
    for shape in [(2, 37, 13), (40, 7)]:
        s = rand_scores(shape, gen)
        out = torch.full(shape, float("nan"))
        q, it = run(backend, s, 0.05, 3, out=out)
        assert q is out
        torch.testing.assert_close(out.double(), ref64(s, 0.05, 3)[0], rtol=0, atol=1e-5)
        assert it.tolist() == [3] * (shape[0] if len(shape) == 3 else 1)


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
def test_bad_out(backend, gen):
    s = rand_scores((2, 6, 4), gen)
    cases = [(torch.empty(2, 6, 5), "out must have the shape"), (torch.empty(2, 6, 4, dtype=torch.float64), "dtype"),
             (torch.empty(2, 4, 6).transpose(1, 2), "contiguous"), (s, "must not share memory")]
    for out, msg in cases:
        with pytest.raises(ValueError, match=msg):
            run(backend, s, 0.05, 3, out=out)


def test_large_output_streaming_path(gen):
    # >= 64 MiB of output takes the streaming-store write path
    s = rand_scores((1, 5800, 2900), gen)
    q = sinkhorn(s, 0.05, 3)
    q_ref = torch.stack([swav_loop(s[0].double(), 0.05, 3)])
    assert (q.double() - q_ref).abs().max() < 1e-5


# ---------------------------------------------------------------- numerical stability

@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_small_epsilon_and_large_scores_stay_finite(backend, gen):
    s = rand_scores((2, 50, 20), gen)
    assert not torch.isfinite(swav_loop(s[0] * 1000, 0.05, 3)).all()  # the exp-domain loop overflows
    for scores, eps in [(s, 0.01), (s * 1000, 0.05), (s * 1e4, 0.01)]:
        q, _ = run(backend, scores, eps, 3)
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q.sum(2), torch.ones(2, 50), rtol=0, atol=1e-5)
        # float32 scores of magnitude |S/eps| ~ 1e6 carry absolute errors ~0.1 in the
        # exponent; compare against the reference fed the same float32 values
        q_ref, _ = ref64(scores, eps, 3)
        assert (q.double() - q_ref).abs().max() < (1e-5 if scores.abs().max() <= 1 else 0.2)


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
def test_minus_inf_scores_get_no_mass(backend, gen):
    s = rand_scores((30, 6), gen)
    s[::3, 2] = float("-inf")
    q, _ = run(backend, s, 0.05, 5)
    assert (q[::3, 2] == 0).all()
    torch.testing.assert_close(q.double(), ref64(s, 0.05, 5)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cap", ["default", "avx2"])
def test_cpu_capabilities_agree(cap):
    code = ("import torch, skysense_fast as s; from skysense_fast.ops import sinkhorn_reference as r;"
            "g=torch.Generator().manual_seed(0); x=torch.rand(3,70,37,generator=g)*2-1;"
            "q=s.sinkhorn(x,0.05,4); d=(q.double()-r(x.double(),0.05,4)[0]).abs().max().item();"
            "qb=s.sinkhorn(x.bfloat16(),0.05,4); db=(qb.double()-r(x.bfloat16().double(),0.05,4)[0]).abs().max().item();"
            "print(s.build_info()['cpu_capability'], d, db)")
    env = dict(os.environ, SKYSENSE_CPU_CAPABILITY=cap)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    built = skysense_fast.build_info()["cpu_capabilities_built"]
    if cap in built:
        assert out[0] in (cap, "default")  # never above what the CPU supports
    assert float(out[1]) < 1e-5 and float(out[2]) < 8e-3


# ---------------------------------------------------------------- op contract

def test_opcheck(gen):
    s = rand_scores((2, 19, 7), gen)
    a = torch.rand(19, generator=gen) + 0.5
    for args in [(s, 0.05, 3, 0.0, None, None), (s[0], 0.1, 2, 1e-3, a, None), (s.double(), 0.05, 1, 0.0, None, None)]:
        torch.library.opcheck(torch.ops.skysense.sinkhorn.default, args)
        torch.library.opcheck(torch.ops.skysense.sinkhorn_into.default, (*args, torch.empty_like(args[0])))


def test_not_differentiable_raises_clearly(gen):
    s = rand_scores((10, 4), gen).requires_grad_()
    q = sinkhorn(s, 0.05, 3)
    with pytest.raises(RuntimeError, match="not differentiable"):
        q.sum().backward()
    with torch.no_grad():
        assert not sinkhorn(s, 0.05, 3).requires_grad


def test_torch_compile_fullgraph(gen):
    import torch._dynamo

    torch._dynamo.reset()
    s = rand_scores((2, 33, 9), gen)

    @torch.compile(backend="aot_eager", fullgraph=True, dynamic=False)
    def assign(x):
        return sinkhorn(x * 2.0, 0.05, 3) * 1.0

    torch.testing.assert_close(assign(s), sinkhorn(s * 2.0, 0.05, 3))


def test_torch_export_and_torchscript(gen):
    s = rand_scores((2, 33, 9), gen)

    class Assign(torch.nn.Module):
        def forward(self, x):
            return torch.ops.skysense.sinkhorn(x, 0.05, 3, 0.0, None, None)[0]

    ep = torch.export.export(Assign(), (s,))
    assert any("skysense.sinkhorn" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(s), sinkhorn(s, 0.05, 3))
    scripted = torch.jit.script(Assign())
    torch.testing.assert_close(scripted(s), sinkhorn(s, 0.05, 3))


# ---------------------------------------------------------------- bad input

BAD = [
    (lambda s: (s[0, 0], 0.05, 3, {}), "scores must have shape"),
    (lambda s: (s.unsqueeze(0), 0.05, 3, {}), "scores must have shape"),
    (lambda s: ((s * 10).long(), 0.05, 3, {}), "scores must be float32"),
    (lambda s: (s[:, :0], 0.05, 3, {}), "at least one"),
    (lambda s: (s, 0.0, 3, {}), "epsilon must be"),
    (lambda s: (s, -1.0, 3, {}), "epsilon must be"),
    (lambda s: (s, math.nan, 3, {}), "epsilon must be"),
    (lambda s: (s, 0.05, 0, {}), "num_iters must be"),
    (lambda s: (s, 0.05, 3, {"tol": -1.0}), "tol must be"),
    (lambda s: (s, 0.05, 3, {"row_marginals": torch.ones(5)}), "row_marginals must have shape"),
    (lambda s: (s, 0.05, 3, {"col_marginals": torch.ones(3, 4)}), "col_marginals must have shape"),
    (lambda s: (s, 0.05, 3, {"col_marginals": -torch.ones(4)}), "col_marginals must be finite and at least"),
    (lambda s: (s, 0.05, 3, {"row_marginals": torch.ones(2, 6), "col_marginals": torch.ones(4)}), "same total mass"),
    (lambda s: (s, 0.05, 3, {"row_marginals": torch.ones(6, dtype=torch.int64)}), "row_marginals must be a floating"),
]


def _with(s, idx, value):
    s = s.clone()
    s[idx] = value
    return s


BAD_VALUES = [
    (lambda s: _with(s, (1, 2, 3), math.nan), "NaN"),
    (lambda s: _with(s, (0, 0, 0), math.inf), "NaN or \\+inf"),
    (lambda s: _with(s, (1, slice(None), 2), -math.inf), "prototype \\(column\\)"),
    (lambda s: _with(s, (0, 4, slice(None)), -math.inf), "sample \\(row\\)"),
]


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments(backend, case, gen):
    s = rand_scores((2, 6, 4), gen)
    make, msg = BAD[case]
    x, eps, iters, kw = make(s)
    with pytest.raises(ValueError, match=msg):
        run(backend, x, eps, iters, **kw)


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference"])
@pytest.mark.parametrize("case", range(len(BAD_VALUES)))
def test_bad_scores(backend, case, gen):
    s = rand_scores((2, 6, 4), gen)
    make, msg = BAD_VALUES[case]
    with pytest.raises(ValueError, match=msg):
        run(backend, make(s), 0.05, 3)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        sinkhorn([[1.0, 2.0]], 0.05)


@pytest.mark.slow
def test_paper_shapes_match_reference(gen):
    for shape in [(8, 4096, 100), (1, 16384, 3000)]:
        s = rand_scores(shape, gen)
        q = sinkhorn(s, 0.05, 3)
        torch.testing.assert_close(q.double(), ref64(s, 0.05, 3)[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- GPU (make gpu-check)

GPU_SHAPES = [(1, 1, 1), (2, 37, 13), (3, 1000, 100), (1, 300, 5000), (2, 64, 60000)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gpu_matches_reference(backend, dtype, shape, gen):
    s = rand_scores(shape, gen, dtype)
    for eps, iters in [(0.05, 3), (0.02, 1)]:
        q, it = run(backend, s.cuda(), eps, iters)
        assert q.is_cuda and q.dtype == dtype
        torch.testing.assert_close(q.double().cpu(), ref64(s, eps, iters)[0], rtol=0, atol=ATOL[dtype])
        assert it.tolist() == [iters] * shape[0]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_marginals_convergence_and_errors(backend, gen):
    s = rand_scores((3, 40, 9), gen)
    a = torch.rand(3, 40, generator=gen) + 0.5
    q, it = run(backend, s.cuda(), 0.1, 200, tol=1e-4, row_marginals=a.cuda())
    _, it_ref = ref64(s, 0.1, 200, tol=1e-4, row_marginals=a.double())
    assert (it.cpu() - it_ref).abs().max() <= 1
    for i in range(3):
        q_i, _ = ref64(s[i], 0.1, int(it[i]), row_marginals=a[i].double())
        torch.testing.assert_close(q[i].double().cpu(), q_i, rtol=0, atol=1e-5)
    for make, msg in BAD_VALUES:
        with pytest.raises(ValueError, match=msg):
            run(backend, make(s).cuda(), 0.05, 3)


@pytest.mark.gpu
def test_gpu_torch_ops_dispatch_and_compile(gen):
    s = rand_scores((2, 33, 9), gen).cuda()
    q, _ = torch.ops.skysense.sinkhorn(s, 0.05, 3, 0.0, None, None)
    torch.testing.assert_close(q.double().cpu(), ref64(s.cpu(), 0.05, 3)[0], rtol=0, atol=1e-5)
    torch.library.opcheck(torch.ops.skysense.sinkhorn.default, (s, 0.05, 3, 0.0, None, None))
    f = torch.compile(lambda x: sinkhorn(x, 0.05, 3), fullgraph=True)
    torch.testing.assert_close(f(s), q)
