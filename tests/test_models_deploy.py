"""Deployment of the tiny SkySense: torch.compile (no graph breaks), torch.export, TorchScript
(trace: the model's optional inputs and dict output do not script), bfloat16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from skysense_fast import models

B, h, w = 1, 4, 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.create("skysense-tiny").eval()


def example(gen=None):
    g = gen or torch.Generator().manual_seed(0)
    return (torch.randn(B, 3, 32 * h, 32 * w, generator=g), torch.randn(B, 3, 10, h, w, generator=g),
            torch.randn(B, 2, 2, h, w, generator=g), torch.randint(1, 367, (B, 3), generator=g),
            torch.randint(1, 367, (B, 2), generator=g), torch.tensor([[45.0, 7.0]]))


class Wrapper(torch.nn.Module):
    """Positional inputs, tuple output: the form export and trace want."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, hr, s2, s1, doy_s2, doy_s1, latlon):
        out = self.m(hr, s2, s1, doy_s2=doy_s2, doy_s1=doy_s1, latlon=latlon)
        return out["fused"], out["geo"]


def test_compile_fullgraph(model):
    torch._dynamo.reset()
    x = example()
    f = torch.compile(Wrapper(model), backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        for a, b in zip(f(*x), Wrapper(model)(*x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_export(model):
    x = example()
    ep = torch.export.export(Wrapper(model), x)
    names = {str(n.target) for n in ep.graph.nodes}
    assert any("skysense.window_attention" in n for n in names) and any("skysense.temporal_attention" in n for n in names)
    for a, b in zip(ep.module()(*x), Wrapper(model)(*x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_torchscript_trace(model):
    x = example()
    with torch.no_grad():
        traced = torch.jit.trace(Wrapper(model), x, check_trace=False)
        x2 = example(torch.Generator().manual_seed(1))
        for a, b in zip(traced(*x2), Wrapper(model)(*x2)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert "skysense::window_attention" in str(traced.inlined_graph)


def test_bfloat16_autocast(model):
    x = example()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused, geo = Wrapper(model)(*x)
    with torch.no_grad():
        ref, _ = Wrapper(model)(*x)
    assert torch.isfinite(fused.float()).all()
    torch.testing.assert_close(fused.float(), ref, rtol=0.1, atol=0.1)
