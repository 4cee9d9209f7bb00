"""skysense_fast.backends() and use_backend()."""

from __future__ import annotations

import json

import importlib

import pytest
import torch

import skysense_fast
from skysense_fast import backends, use_backend
from skysense_fast.backends import BACKENDS, forced_backend
sinkhorn_module = importlib.import_module("skysense_fast.ops.sinkhorn")


def test_backends_reports_every_backend_with_a_reason():
    info = backends()
    for name in (*BACKENDS, "flash_attn"):
        assert set(info[name]) == {"available", "reason"}
        assert isinstance(info[name]["available"], bool)
        assert info[name]["reason"], f"{name} has no reason"
    assert info["reference"]["available"] and info["cpp"]["available"]
    build = info["build"]
    assert build["cpu_capability"] in build["cpu_capabilities_built"]
    if not torch.cuda.is_available():
        assert not info["cuda"]["available"]


def test_use_backend_unknown_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'.*reference, cpp, triton, cuda"):
        with use_backend("fast"):
            pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_use_backend_unavailable():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        with use_backend("cuda"):
            pass


def test_use_backend_is_scoped_and_nests():
    assert forced_backend() is None
    with use_backend("reference"):
        assert forced_backend() == "reference"
        with use_backend("cpp"):
            assert forced_backend() == "cpp"
        assert forced_backend() == "reference"
    assert forced_backend() is None


def test_forced_reference_runs_the_reference(monkeypatch):
    calls = []
    op = sinkhorn_module.SINKHORN
    real = op.reference
    monkeypatch.setattr(op, "reference", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = torch.rand(5, 3)
    skysense_fast.sinkhorn(s)
    assert calls == []
    with use_backend("reference"):
        skysense_fast.sinkhorn(s)
    assert calls == [1]


def test_cli_info_and_demo(capsys):
    from skysense_fast.cli import main

    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["configs"]["skysense-2b"]["parameters_M"] == 1659.01 and "cpp" in info["backends"]
    assert main(["sinkhorn-demo", "--batch", "2", "--samples", "300", "--prototypes", "30"]) == 0
    out = capsys.readouterr().out
    assert "rows sum to 1" in out and "max |Q - Q_ref|" in out
