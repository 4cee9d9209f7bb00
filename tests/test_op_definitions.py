"""One definition per op (ops/fused_op.py): everything derives from the C++ schema, and the
backend choice honours each backend's stated limits."""

from __future__ import annotations

import inspect
import logging
import re

import pytest
import torch

import skysense_fast
from skysense_fast import _lib
from skysense_fast.ops import fused_op, temporal_attention, window_attention
from skysense_fast.ops.fused_op import OPS

OP_NAMES = ["window_attention", "temporal_attention", "temporal_attention_qkv", "fusion_tokens", "sinkhorn",
            "sinkhorn_into"]


def test_every_op_is_declared_once():
    assert sorted(OPS) == sorted(OP_NAMES)
    for name, op in OPS.items():
        assert op.arg_names == [a.name for a in getattr(torch.ops.skysense, name).default._schema.arguments]


@pytest.mark.parametrize("name", [n for n in OP_NAMES if not n.startswith("sinkhorn_into")])
def test_backward_schema_names_what_it_takes_and_gives(name):
    op = OPS[name]
    if op.backward_schema is None:
        return
    for n in op.backward_args:  # grad_<output>, an output or a forward argument
        assert n in op.arg_names or n in op.returns or n[len("grad_"):] in op.returns, n
    for r in op.backward_returns:
        assert r.startswith("grad_") and r[len("grad_"):] in op.arg_names, r


@pytest.mark.parametrize("fn, prepare", [("window_attention", "window_attention_prepare"),
                                         ("temporal_attention", "temporal_attention_prepare"),
                                         ("sinkhorn", "sinkhorn_prepare"), ("fusion_tokens", "fusion_tokens_check")])
def test_argument_checks_take_the_schema_arguments(fn, prepare):
    """The C++ argument checks' bindings name their parameters as the schema does."""
    doc = getattr(_lib.native(), prepare).__doc__
    names = re.findall(r"(\w+): ", doc.split("\n")[0].split("(", 1)[1])
    assert names == OPS[fn].arg_names


def test_entry_point_is_checked_against_the_schema():
    op = OPS["temporal_attention"]

    def wrong(q, k, v, mask=None, scale=None):
        pass

    with pytest.raises(TypeError, match="differ from the schema"):
        op.entry(wrong)

    def wrong_default(q, k, v, key_padding_mask=None, scale=1.0):
        pass

    with pytest.raises(TypeError, match="scale defaults to 1.0"):
        op.entry(wrong_default)


def test_cpu_kernel_limit_falls_back_to_the_reference_and_says_why(caplog):
    """A window larger than the CPU kernel's 16 runs the reference (logged at DEBUG); forcing
    cpp raises with every backend's reasons."""
    q = torch.randn(1, 17, 17, 1, 4)
    with caplog.at_level(logging.DEBUG, logger="skysense_fast"):
        out = window_attention(q, q, q, 17)
    assert any("cpp: window (17, 17) is over 16" in r.message for r in caplog.records)
    torch.testing.assert_close(out, skysense_fast.ops.window_attention_reference(q, q, q, (17, 17)))
    with pytest.raises(RuntimeError, match=r"backend 'cpp' cannot run this call: window \(17, 17\) is over 16.*"
                                           r"reference: can run it"):
        with skysense_fast.use_backend("cpp"):
            window_attention(q, q, q, 17)


def test_long_sequences_run_the_reference_on_the_cpu():
    q = torch.randn(2, 1, 300, 8, requires_grad=True)
    out = temporal_attention(q, q, q)
    ref = skysense_fast.ops.temporal_attention_reference(q, q, q)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), q)[0], torch.autograd.grad(ref.sum(), q)[0])


def test_gpu_backend_on_cpu_tensors_needs_the_gpu_path_registered():
    q = torch.randn(1, 4, 4, 1, 4)
    if not skysense_fast.backends()["triton"]["available"] or torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter")
    with pytest.raises(RuntimeError, match="gpu_implementations_on_cpu"):
        with skysense_fast.use_backend("triton"):
            window_attention(q, q, q, 4)


def test_interpreted_gpu_path_goes_through_the_registered_op(monkeypatch):
    """Forward and backward reach the CUDA implementation registered for the op (here on
    the CPU key), called by the dispatcher and by register_autograd's formula."""
    if not skysense_fast.backends()["triton"]["available"] or torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter")
    op = OPS["temporal_attention"]
    calls = []
    triton = op.backends["triton"]
    monkeypatch.setitem(op.backends, "triton", fused_op.Backend(
        "triton", triton.devices, triton.limits, lambda a: calls.append("fwd") or triton.forward(a),
        lambda a: calls.append("bwd") or triton.backward(a)))
    q = torch.randn(3, 2, 5, 8, requires_grad=True)
    with fused_op.gpu_implementations_on_cpu(), skysense_fast.use_backend("triton"):
        out = temporal_attention(q, q, q)
        assert out.grad_fn is not None and "Backward" in type(out.grad_fn).__name__
        g, = torch.autograd.grad(out.sum(), q)
    assert calls == ["fwd", "bwd"]
    ref = skysense_fast.ops.temporal_attention_reference(q, q, q)
    torch.testing.assert_close(g, torch.autograd.grad(ref.sum(), q)[0], rtol=1e-4, atol=1e-4)


def test_reference_inside_the_registered_op():
    """torch.ops called directly under use_backend('reference') (as a compiled graph does):
    the registered implementation runs the reference, its backward through autograd."""
    if not skysense_fast.backends()["triton"]["available"] or torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter")
    q = torch.randn(1, 8, 8, 2, 4, requires_grad=True)
    with fused_op.gpu_implementations_on_cpu(), skysense_fast.use_backend("reference"):
        out, lse = torch.ops.skysense.window_attention(q, q, q, [4, 4], [2, 2], None, None, None, None)
        assert torch.isnan(lse).all()
        g, = torch.autograd.grad(out.sum(), q)
    ref = skysense_fast.ops.window_attention_reference(q, q, q, (4, 4), (2, 2))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, torch.autograd.grad(ref.sum(), q)[0])


def test_public_functions_keep_their_documented_signatures():
    sig = inspect.signature(skysense_fast.sinkhorn)
    assert list(sig.parameters)[-2:] == ["out", "return_iters"]
    assert sig.parameters["out"].kind is inspect.Parameter.KEYWORD_ONLY


def _temporal_args(g, masked=True):
    proj = torch.randn(3, 5, 3, 2, 8, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[:, -1] = masked
    return proj, mask


def test_opcheck_temporal_attention_cpp():
    g = torch.Generator().manual_seed(0)
    proj, mask = _temporal_args(g)
    q, k, v = (t.transpose(1, 2) for t in proj.unbind(2))
    torch.library.opcheck(torch.ops.skysense.temporal_attention.default, (q, k, v, mask, None))
    torch.library.opcheck(torch.ops.skysense.temporal_attention_qkv.default, (proj, mask, 0.3))


@pytest.mark.parametrize("op", ["window_attention", "temporal_attention_qkv"])
def test_opcheck_registered_triton_path(op):
    """The CUDA registration (fake kernel, autograd, schema) checked by torch's opcheck, run on
    CPU tensors through the interpreter fixture."""
    if not skysense_fast.backends()["triton"]["available"] or torch.cuda.is_available():
        pytest.skip("needs the Triton interpreter")
    g = torch.Generator().manual_seed(1)
    if op == "window_attention":
        q = torch.randn(1, 8, 8, 2, 4, generator=g).requires_grad_()
        args = (q, q.detach().clone().requires_grad_(), q.detach().clone(), [4, 4], [2, 2],
                torch.full((2, 1, 1), 2.0, requires_grad=True), torch.randn(2, 16, 16, generator=g, requires_grad=True),
                None, None)
    else:
        proj, mask = _temporal_args(g)
        args = (proj.detach().float().requires_grad_(), mask, None)
    with skysense_fast.use_backend("triton"):
        torch.library.opcheck(getattr(torch.ops.skysense, op).default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
