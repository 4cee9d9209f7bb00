"""What the GPU code needs, checked without a GPU: each bug that once kept it from compiling or
running well on sm_80 / sm_90, reproduced and held fixed.

The Triton compiler runs in a subprocess: this test process runs Triton under its interpreter
(conftest), which accepts code the real compiler refuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skysense_fast import _lib

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")


def gate(tmp_path, *cases, arch=(80, 90), cuda_cpp=False):
    """Runs benchmarks/gpu_compile.py on some cases; (exit code, table, output)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "table.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_compile.py"), "--arch", *map(str, arch), "--jobs", "2",
           "--out", str(out), *[a for c in cases for a in ("-k", c)]]
    if not cuda_cpp:
        cmd.append("--no-cuda-cpp")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r.returncode, out.read_text() if out.exists() else "", r.stdout + r.stderr


def rows(table, kernel):
    return [line for line in table.splitlines() if line.startswith(f"| {kernel} |")]


def test_model_shapes_compile_within_limits(tmp_path):
    """SwinV2 cosine attention once failed to compile (a plain Python global read in a jit
    function); 64-wide dk/dv tiles spilled on sm_80 at windows 8-16; 256-token tiles needed more
    shared memory than an H100 has. Now every one compiles, unspilled, deterministic."""
    code, table, log = gate(tmp_path, "window_attention v2 swinv2-h s1 bf16", "window_attention v2 window 16 bf16",
                            "temporal_attention T=256 (largest) bf16")
    assert code == 0, log[-3000:]
    for kernel in ("_fwd", "_bwd_dq", "_bwd_dkdv"):
        found = rows(table, kernel)
        assert len(found) == 6, (kernel, table)  # 3 cases x 2 architectures
        for line in found:
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[6] == "0" and cells[7] == "0", line  # spills, stack
            assert int(cells[8]) <= 232448, line
            assert cells[9] in ("wgmma", "mma.sync"), line  # bf16 runs on tensor cores


def test_gate_fails_on_what_it_guards(tmp_path, monkeypatch):
    """The gate is not a formality: a kernel that reads a Python global, or sums with float
    atomics, makes it fail."""
    script = tmp_path / "bad.py"
    script.write_text(f"""
import sys, torch, triton, triton.language as tl
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
import gpu_compile
from skysense_fast.triton.launch import Launch
LIMIT = 4.0

@triton.jit
def reads_global(X):
    tl.store(X, tl.minimum(tl.load(X), LIMIT))

@triton.jit
def atomic_sum(X, Y):
    tl.atomic_add(Y, tl.load(X))

x = torch.empty(4, device="meta")
gpu_compile.all_cases = lambda dtypes: [gpu_compile.Case("bad", "fp32", [Launch(reads_global, (1,), (x,)),
                                                                        Launch(atomic_sum, (1,), (x, x))])]
sys.argv = ["gpu_compile.py", "--arch", "90", "--no-cuda-cpp", "--out", {str(tmp_path / 'bad.md')!r}]
gpu_compile.ARGS = gpu_compile.build_parser().parse_args()
gpu_compile.main()
""")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reads_global / bad / fp32 / sm_90: CompilationError" in r.stdout, r.stdout
    assert "atomic_sum / bad / fp32 / sm_90: atomic float adds" in r.stdout, r.stdout


@pytest.mark.skipif(not any(Path(p).exists() for p in ("/usr/local/cuda-13.0/bin/nvcc", "/usr/local/cuda/bin/nvcc"))
                    and shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_sinkhorn_is_deterministic(tmp_path):
    """kernels/sinkhorn.cu said it was deterministic but summed columns with atomicAdd in
    shared memory; its PTX now holds no float atomics, and nothing spills."""
    code, table, log = gate(tmp_path, "no triton case", arch=(80, 90), cuda_cpp=True)
    assert code == 0, log[-3000:]
    assert "| sinkhorn.cu | row_pass<fp32> | 90 |" in table, table


def test_sinkhorn_tiles_at_the_prototype_bank():
    """For K in (2048, 4096] the row pass took 2-row tiles: an N/2 x K partial buffer (393 MB at
    65536 x 3000) rewritten every iteration and a fold looping 32,768 times per column."""
    pytest.importorskip("triton")
    from skysense_fast.triton import sinkhorn as tsk

    for B, N, K in [(1, 65536, 3000), (1, 65536, 4096), (8, 4096, 100), (1, 4096, 65536)]:
        block_r, block_k, one_tile, programs = tsk._tiles(B, N, K)
        assert block_r >= 4 and programs <= tsk.ROW_PROGRAMS
        assert B * programs * K <= tsk.PARTIAL_FLOATS
        if one_tile:
            assert block_k >= K
        plan = tsk.launches(torch.empty(B, N, K, device=META), torch.empty(B, N, device=META),
                            torch.empty(B, K, device=META), 0.05, 3, 0.0)[0]
        part = next(a for a in plan[2].args if isinstance(a, torch.Tensor) and a.dim() == 3 and a.shape[1] == programs)
        assert part.numel() * 4 <= 32 << 20, (B, N, K, part.shape)


def test_window_and_temporal_kernels_read_views_in_place():
    """The window kernels copied q, k, v to contiguous on every call although the module passes
    views of one projection (6 copies a training step)."""
    pytest.importorskip("triton")
    from skysense_fast.triton import temporal_attention as ttemp
    from skysense_fast.triton import window_attention as twin

    q, k, v = torch.empty(2, 16, 16, 3, 4, 44, device=META, dtype=torch.bfloat16).unbind(3)
    prepared = _lib.native().window_attention_prepare(q, k, v, [8, 8], [4, 4], torch.empty(4, device=META),
                                                      torch.empty(4, 64, 64, device=META), None, None)
    launch = twin.forward_launch(*prepared)[0]
    assert [t.stride() for t in launch.args[:3]] == [q.stride(), k.stride(), v.stride()]
    bwd = twin.backward_launches(torch.empty(q.shape, device=META, dtype=q.dtype), *twin.forward_launch(*prepared)[1:],
                                 *prepared)[0]
    assert all([t.stride() for t in b.args[:3]] == [q.stride(), k.stride(), v.stride()] for b in bwd)
    q, k, v = (t.transpose(1, 2) for t in torch.empty(64, 31, 3, 4, 16, device=META).unbind(2))
    launch = ttemp.forward_launch(*_lib.native().temporal_attention_prepare(q, k, v, None, None))[0]
    assert [t.stride() for t in launch.args[:3]] == [q.stride(), k.stride(), v.stride()]


def test_argument_checks_read_no_data_off_the_cpu():
    """temporal_attention and fusion_tokens synced the host on every CUDA call (a check that read
    the mask / the days of year). Off the CPU those checks no longer read data: on meta
    tensors, which hold none, they pass; on the CPU they still raise."""
    q = torch.empty(5, 2, 7, 8, device=META)
    mask = torch.zeros(5, 7, dtype=torch.bool, device=META)
    _lib.native().temporal_attention_prepare(q, q, q, mask, None)
    with pytest.raises(ValueError, match="ignores every key"):
        qc = torch.zeros(5, 2, 7, 8)
        _lib.native().temporal_attention_prepare(qc, qc, qc, torch.ones(5, 7, dtype=torch.bool), None)
    s2 = torch.empty(1, 3, 4, 2, 2, device=META)
    doy = torch.empty(1, 3, dtype=torch.long, device=META)
    _lib.native().fusion_tokens_check(None, s2, None, None, doy, None, None, None, torch.empty(365, 4, device=META))
    with pytest.raises(ValueError, match="days of year"):
        _lib.native().fusion_tokens_check(None, torch.zeros(1, 3, 4, 2, 2), None, None, torch.tensor([[0, 5, 400]]),
                                          None, None, None, torch.zeros(365, 4))


def test_gpu_check_fails_loudly(tmp_path):
    """gpu_check.sh ran under sh and piped every step into tail: a failing build or test
    passed silently, and a time-out lost the output."""
    fake = tmp_path / "python3"  # fails the build and the tests (the steps once piped into tail), passes the rest
    fake.write_text("#!/bin/sh\nif [ \"$1\" = -m ]; then echo \"fake python: $2 failing\" >&2; exit 3; fi\n"
                    "echo 2.11.0\n")
    fake.chmod(0o755)
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env={**os.environ, "PYTHON": str(fake)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "fake python: pip failing" in r.stdout + r.stderr


def test_gpu_check_reports_a_failed_table_and_goes_on(capsys, monkeypatch):
    """One failing table used to end gpu_check.py before anything was printed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    monkeypatch.setattr(gpu_check, "FAILURES", [])

    def broken():
        raise RuntimeError("kernel exploded")

    gpu_check.section(broken)
    gpu_check.section(lambda: ["| next table |"])
    out = capsys.readouterr().out
    assert "broken failed" in out and "| next table |" in out
    assert gpu_check.FAILURES and "kernel exploded" in gpu_check.FAILURES[0]
