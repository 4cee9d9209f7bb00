"""Temporal fusion, float32 on the CPU: temporal_attention (4,096 sequences of 31 tokens =
1 + 20 + 10, 16 heads x 64) against torch SDPA on the permuted layout (the permutes
included) and the eager reference, forward and forward+backward; fusion_tokens against the
eager permute + cat + index + add.

    pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from skysense_fast.ops import (fusion_tokens, fusion_tokens_reference, temporal_attention, temporal_attention_qkv,
                               temporal_attention_reference)

S, T, HEADS, HD = 4096, 31, 16, 64


@functools.cache
def qkv(grad: bool):
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(S, T, 3, HEADS, HD, generator=g)  # one qkv projection, as in a layer
    mask = torch.rand(S, T, generator=g) > 0.8
    mask[:, 0] = False
    return proj.requires_grad_(grad), mask, torch.randn(S, T, HEADS * HD, generator=g)


def heads_first(proj):  # (S, heads, T, hd) views
    return [t.transpose(1, 2) for t in proj.unbind(2)]


ATTN = {
    # each returns (S, T, heads * hd), what the output projection consumes
    "fused": lambda proj, m: temporal_attention(*heads_first(proj), m).transpose(1, 2).reshape(S, T, -1),
    # the same kernel on the packed projection, as the fusion layers call it (one gradient buffer)
    "fused_qkv": lambda proj, m: temporal_attention_qkv(proj, m).transpose(1, 2).reshape(S, T, -1),
    "sdpa": lambda proj, m: F.scaled_dot_product_attention(*[t.contiguous() for t in heads_first(proj)],
                                                           attn_mask=~m[:, None, None, :]).transpose(1, 2).reshape(S, T, -1),
    "reference": lambda proj, m: temporal_attention_reference(*heads_first(proj), m).transpose(1, 2).reshape(S, T, -1),
}


@pytest.mark.parametrize("impl", list(ATTN))
def test_temporal_attention_forward(benchmark, impl):
    proj, mask, _ = qkv(False)
    benchmark.group = f"temporal attention fwd ({S} seqs x {T} tokens, {HEADS} heads x {HD})"
    benchmark.extra_info["impl"] = impl
    if impl.startswith("fused"):
        torch.testing.assert_close(ATTN[impl](proj, mask), ATTN["sdpa"](proj, mask), rtol=1e-4, atol=1e-4)
    benchmark.pedantic(ATTN[impl], args=(proj, mask), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("impl", list(ATTN))
def test_temporal_attention_forward_backward(benchmark, impl):
    proj, mask, grad = qkv(True)
    benchmark.group = f"temporal attention fwd+bwd ({S} seqs x {T} tokens, {HEADS} heads x {HD})"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(lambda: torch.autograd.grad(ATTN[impl](proj, mask), proj, grad), rounds=3, warmup_rounds=1)


@functools.cache
def maps():
    g = torch.Generator().manual_seed(0)
    B, C, h, w, T1, T2 = 4, 256, 32, 32, 20, 10  # 4,096 pixels x 31 tokens x 256 channels
    kw = dict(hr=torch.randn(B, C, h, w, generator=g), s2=torch.randn(B, T1, C, h, w, generator=g),
              s1=torch.randn(B, T2, C, h, w, generator=g), doy_s2=torch.randint(1, 367, (B, T1), generator=g),
              valid_s2=torch.rand(B, T1, generator=g) > 0.2, date_table=torch.randn(1, 365, C, generator=g))
    return kw


@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_fusion_tokens(benchmark, impl):
    kw = maps()
    fn = {"fused": lambda: fusion_tokens(**kw), "eager": lambda: fusion_tokens_reference(**kw)}[impl]
    benchmark.group = "fusion_tokens (4 x 32 x 32 pixels, 1 + 20 + 10 tokens, 256 channels)"
    benchmark.extra_info["impl"] = impl
    if impl == "fused":
        torch.testing.assert_close(fn()[0], fusion_tokens_reference(**kw)[0])
    benchmark.pedantic(fn, rounds=10, warmup_rounds=2)
