"""`skysense-fast bench`: every fused op timed against its reference, results checked."""

import math

import pytest
import torch

from skysense_fast import bench
from skysense_fast.cli import main


def test_bench_rows_are_complete_and_correct(monkeypatch):
    # shorter timing windows: this checks the command, not the speed
    real = bench.Timer.blocked_autorange
    monkeypatch.setattr(bench.Timer, "blocked_autorange", lambda self, min_run_time=0.3: real(self, min_run_time=0.01))
    lines = []
    rows = bench.run("cpu", 1, out=lines.append)
    assert [r["pass"] for r in rows] == ["fwd", "fwd", "fwd+bwd", "fwd", "fwd+bwd", "fwd", "fwd+bwd"]
    for r in rows:
        assert r["fused_ms"] > 0 and r["reference_ms"] > 0 and math.isfinite(r["speedup"])
        assert r["max_abs_err"] < 1e-4, r
    assert len(lines) == 1 + len(rows) and "speed-up" in lines[0]


def test_bench_cli_errors(capsys):
    assert main(["bench", "--scale", "0"]) == 2
    assert "--scale must be >= 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
def test_bench_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rows = bench.run("cuda", 1, out=lambda *a: None)
    assert all(r["max_abs_err"] < 1e-2 for r in rows)
