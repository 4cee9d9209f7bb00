"""Temporal fusion, float32 on the CPU: temporal_attention (4,096 sequences of 31 tokens =
1 + 20 + 10, 16 heads x 64; and a small cache-resident 512 x 16 tokens, 8 x 32) against
torch SDPA on the same strided views of one projection and the eager reference, forward and
forward+backward; fusion_tokens against the eager permute + cat + index + add.

    pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from skysense_fast.ops import (fusion_tokens, fusion_tokens_reference, temporal_attention, temporal_attention_qkv,
                               temporal_attention_reference)

SHAPES = {  # sequences, tokens, heads, head_dim
    "4096x31-16x64": (4096, 31, 16, 64),  # a 64 x 64 fusion grid, 1 + 20 + 10 tokens, ViT-L-wide heads
    "512x16-8x32": (512, 16, 8, 32),     # small and cache-resident: call overhead shows
}


@functools.cache
def qkv(shape: str, grad: bool):
    S, T, heads, hd = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(S, T, 3, heads, hd, generator=g)  # one qkv projection, as in a layer
    mask = torch.rand(S, T, generator=g) > 0.8
    mask[:, 0] = False
    return proj.requires_grad_(grad), mask, torch.randn(S, T, heads * hd, generator=g)


def heads_first(proj):  # (S, heads, T, hd) views of the projection, what a layer passes
    return [t.transpose(1, 2) for t in proj.unbind(2)]


def merge(o):  # (S, heads, T, hd) -> (S, T, heads * hd), what the output projection consumes
    return o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)


ATTN = {
    "fused": lambda proj, m: merge(temporal_attention(*heads_first(proj), m)),
    # the same kernel on the packed projection, as the fusion layers call it (one gradient buffer)
    "fused_qkv": lambda proj, m: merge(temporal_attention_qkv(proj, m)),
    # SDPA as its users call it: on the strided views of the projection, a boolean keep-mask
    "sdpa": lambda proj, m: merge(F.scaled_dot_product_attention(*heads_first(proj), attn_mask=~m[:, None, None, :])),
    "reference": lambda proj, m: merge(temporal_attention_reference(*heads_first(proj), m)),
}


def _group(what, shape):
    S, T, heads, hd = SHAPES[shape]
    return f"temporal attention {what} ({S} seqs x {T} tokens, {heads} heads x {hd})"


@pytest.mark.parametrize("impl", list(ATTN))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_temporal_attention_forward(benchmark, shape, impl):
    proj, mask, _ = qkv(shape, False)
    benchmark.group = _group("fwd", shape)
    benchmark.extra_info["impl"] = impl
    if impl.startswith("fused"):
        torch.testing.assert_close(ATTN[impl](proj, mask), ATTN["sdpa"](proj, mask), rtol=1e-4, atol=1e-4)
    rounds = 5 if shape.startswith("4096") else 50
    benchmark.pedantic(ATTN[impl], args=(proj, mask), rounds=rounds, warmup_rounds=2)


@pytest.mark.parametrize("impl", list(ATTN))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_temporal_attention_forward_backward(benchmark, shape, impl):
    proj, mask, grad = qkv(shape, True)
    benchmark.group = _group("fwd+bwd", shape)
    benchmark.extra_info["impl"] = impl
    rounds = 5 if shape.startswith("4096") else 30
    benchmark.pedantic(lambda: torch.autograd.grad(ATTN[impl](proj, mask), proj, grad), rounds=rounds,
                       warmup_rounds=2)


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
