"""Special values and misplaced tensors in the fused ops: a row with no finite score is NaN as
in the reference (never another row's numbers), an ignored NaN key stays out, a meta tensor
among CPU arguments is refused, and a strided `out` gives the backward the right gradients."""

from __future__ import annotations

import pytest
import torch

import skysense_fast
from skysense_fast.ops import (
    fusion_tokens,
    temporal_attention,
    temporal_attention_reference,
    window_attention,
    window_attention_reference,
)

META = torch.device("meta")


def _qkv(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("where", ["mask row", "nan q", "nan logit_scale"])
def test_window_rows_without_a_finite_score_are_nan_and_alone(where):
    """A row whose scores have no finite maximum once stopped the C++ tile early: the rest of
    the window reused the previous window's probabilities (finite garbage, error up to 1.4)."""
    B, H, W, nh, hd, win = 1, 8, 8, 2, 5, 4
    q, k, v = _qkv((B, H, W, nh, hd))
    N = win * win
    ls = torch.tensor([1.0, 2.0], dtype=torch.float64)
    bias = torch.randn(nh, N, N, dtype=torch.float64)
    mask = torch.zeros(4, N, N, dtype=torch.float64)
    if where == "mask row":
        mask[1, 3] = float("-inf")         # window 1, token 3: every key masked
    elif where == "nan q":
        q[0, 1, 5, 1, 2] = float("nan")    # one query element: its row in its window
    else:
        ls[0] = float("nan")               # head 0, every window
    with skysense_fast.use_backend("cpp"):
        out = window_attention(q, k, v, win, 0, logit_scale=ls, bias=bias, mask=mask)
    ref = window_attention_reference(q, k, v, (win, win), (0, 0), ls, bias, mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert out.isnan().any() and out.isfinite().any()


def test_temporal_ignored_nan_key_stays_out():
    """A NaN in a key that key_padding_mask ignores made the C++ kernel's output NaN."""
    g = torch.Generator().manual_seed(1)
    S, nh, T, hd = 3, 2, 9, 4
    q, k, v = (torch.randn(S, nh, T, hd, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(S, T, dtype=torch.bool)
    mask[:, 4] = True
    kn, vn = k.detach().clone(), v.detach().clone()
    kn[:, :, 4], vn[:, :, 4] = float("nan"), float("inf")
    kn.requires_grad_(), vn.requires_grad_()
    with skysense_fast.use_backend("cpp"):
        out = temporal_attention(q, kn, vn, mask)
    ref = temporal_attention_reference(q, k, v, mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(out, (q, kn, vn), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_a_meta_tensor_among_cpu_arguments_is_refused():
    """The dispatcher routes a call with one meta tensor to the fake kernel, which returned
    uninitialised CPU memory as the result, with no error."""
    q, k, v = (t.float() for t in _qkv((1, 8, 8, 2, 4)))
    with pytest.raises(ValueError, match="bias must be on cpu like q, got meta"):
        window_attention(q, k, v, 4, 0, bias=torch.zeros(2, 16, 16, device=META))
    tq = torch.randn(3, 2, 5, 4)
    with pytest.raises(ValueError, match="key_padding_mask must be on cpu"):
        temporal_attention(tq, tq, tq, torch.zeros(3, 5, dtype=torch.bool, device=META))
    with pytest.raises(ValueError, match="col_marginals must be on cpu"):
        skysense_fast.sinkhorn(torch.randn(6, 4), col_marginals=torch.ones(4, device=META))
    s2 = torch.randn(1, 2, 4, 3, 3)
    with pytest.raises(ValueError, match="date_table must be on cpu"):
        fusion_tokens(None, s2, None, doy_s2=torch.tensor([[3, 40]]), date_table=torch.zeros(365, 4, device=META))


def test_window_backward_reads_a_strided_out():
    """window_attention_backward called with a non-contiguous `out` read it as if dense."""
    q, k, v = _qkv((1, 8, 8, 2, 4), seed=3)
    args = ([4, 4], [2, 2], None, torch.randn(2, 16, 16, dtype=torch.float64), None, None)
    out, lse = torch.ops.skysense.window_attention(q, k, v, *args)
    go = torch.randn_like(out)
    dense = torch.ops.skysense.window_attention_backward(go, q, k, v, out, lse, *args)
    strided_out = out.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided_out.is_contiguous()
    strided = torch.ops.skysense.window_attention_backward(go, q, k, v, strided_out, lse, *args)
    for a, b in zip(dense, strided):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_sinkhorn_takes_expanded_and_strided_scores(backend):
    """Expanded scores (one row broadcast over N samples) were refused by the C++ Sinkhorn:
    'out must not share memory with scores'."""
    from skysense_fast.ops import sinkhorn_reference

    g = torch.Generator().manual_seed(2)
    for s in (torch.randn(1, 12, generator=g).expand(30, 12), torch.randn(12, 30, generator=g).t(),
              torch.randn(2, 1, 7, generator=g).expand(2, 9, 7)):
        with skysense_fast.use_backend(backend):
            q = skysense_fast.sinkhorn(s, 0.1, 5)
        torch.testing.assert_close(q, sinkhorn_reference(s.contiguous(), 0.1, 5)[0], rtol=1e-5, atol=1e-6)
    s = torch.randn(30, 12, generator=g)
    with pytest.raises(ValueError, match="out must not share memory with scores"):
        skysense_fast.sinkhorn(s, out=s)


def test_a_nan_query_does_not_leak_into_the_next_window():
    """Found by tests/test_fuzz_ops.py: cosine normalisation of a NaN row made the tile's zero
    channel padding NaN, and the next window (same thread) read it: NaN output there too."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 3, 1, 1, generator=g) for _ in range(3))
    q[0, 0, 0, 0, 0] = float("nan")
    ls = torch.tensor([1.5])
    with skysense_fast.use_backend("cpp"):
        out = window_attention(q, k, v, (1, 1), (0, 0), logit_scale=ls)
    ref = window_attention_reference(q, k, v, (1, 1), (0, 0), ls)
    assert torch.isnan(out[0, 0, 0]).all() and torch.isfinite(out[0, 0, 1:]).all()
    torch.testing.assert_close(out, ref, equal_nan=True)


def test_empty_inputs_get_errors_that_name_them():
    """A series with T = 0 failed with 'tensor does not have a device'."""
    with pytest.raises(ValueError, match="s2 has no acquisitions"):
        fusion_tokens(None, torch.randn(1, 0, 4, 2, 2), None)
    with pytest.raises(ValueError, match="empty dimension"):
        temporal_attention(*[torch.randn(3, 2, 0, 4)] * 3)
    with pytest.raises(ValueError, match="empty dimension"):
        window_attention(*[torch.randn(0, 8, 8, 2, 4)] * 3, 4)
    with pytest.raises(ValueError, match="at least one problem, sample and prototype"):
        skysense_fast.sinkhorn(torch.randn(0, 5))


def test_sinkhorn_beyond_float32_precision_says_so():
    """Scores with |S| / eps ~ 1e9 failed as 'a prototype whose scores are all -inf' (CPU
    kernel; the Triton kernel and the reference answer there, inaccurately, as the docstring
    says)."""
    s = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) * 1e8
    with skysense_fast.use_backend("cpp"):
        with pytest.raises(ValueError, match="too large for float32.*float64"):
            skysense_fast.sinkhorn(s, 0.05)
        q = skysense_fast.sinkhorn(s.double(), 0.05)
    from skysense_fast.ops import sinkhorn_reference

    torch.testing.assert_close(q, sinkhorn_reference(s.double(), 0.05)[0], rtol=1e-5, atol=1e-6)  # float64 at 2e9


def test_sinkhorn_subnormal_marginals_are_refused():
    """Marginals of 1e-44 (subnormal float32) gave NaN Q, silently."""
    s = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    with skysense_fast.use_backend("cpp"):
        with pytest.raises(ValueError, match="col_marginals must be finite and at least .* smallest normal float32"):
            skysense_fast.sinkhorn(s, 0.05, 3, col_marginals=torch.full((6,), 1e-44))
        q = skysense_fast.sinkhorn(s, 0.05, 3, col_marginals=torch.full((6,), 1e-30))  # small but normal
    assert torch.isfinite(q).all()
