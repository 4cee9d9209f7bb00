"""MultimodalTemporalFusion: official key layout, fused vs torch's MultiheadAttention path."""

from __future__ import annotations

import pytest
import torch

from skysense_fast.nn import MultimodalTemporalFusion, TemporalPositionEncoding
from skysense_fast.ops import fusion_tokens_reference


def official_keys(layers: int, in_dims: int, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The fusion checkpoint's keys and shapes per SKYSENSE_SPEC.md §6 (at any size)."""
    keys = {"porj_linear.weight": (dim, in_dims), "porj_linear.bias": (dim,), "cls_token": (1, 1, dim)}
    for i in range(layers):
        p = f"layers.{i}."
        keys |= {p + "ln1.weight": (dim,), p + "ln1.bias": (dim,), p + "ln2.weight": (dim,), p + "ln2.bias": (dim,),
                 p + "attn.attn.in_proj_weight": (3 * dim, dim), p + "attn.attn.in_proj_bias": (3 * dim,),
                 p + "attn.attn.out_proj.weight": (dim, dim), p + "attn.attn.out_proj.bias": (dim,),
                 p + "ffn.layers.0.0.weight": (hidden, dim), p + "ffn.layers.0.0.bias": (hidden,),
                 p + "ffn.layers.1.weight": (dim, hidden), p + "ffn.layers.1.bias": (dim,)}
    return keys


def test_state_dict_matches_official_layout():
    m = MultimodalTemporalFusion(in_dims=40, embed_dims=32, num_layers=2, num_heads=4, device="meta")
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == official_keys(2, 40, 32, 128)
    full = MultimodalTemporalFusion(device="meta")
    n = sum(p.numel() for p in full.parameters())
    assert abs(n / 1e6 - 305.20) < 0.01, n  # SKYSENSE_SPEC.md §1: fusion 305.20 M
    assert TemporalPositionEncoding(device="meta").ctpe.shape == (1, 365, 2816)


@pytest.mark.parametrize("masked", [False, True])
def test_fused_matches_torch_multihead_attention(masked):
    torch.manual_seed(0)
    fused = MultimodalTemporalFusion(in_dims=24, embed_dims=32, num_layers=2, num_heads=4)
    ref = MultimodalTemporalFusion(in_dims=24, embed_dims=32, num_layers=2, num_heads=4, fused=False)
    ref.load_state_dict(fused.state_dict())
    tokens = torch.randn(50, 9, 24)
    mask = (torch.rand(50, 9) > 0.6) if masked else None
    a = tokens.clone().requires_grad_()
    b = tokens.clone().requires_grad_()
    ya, yb = fused(a, mask), ref(b, mask)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [a, *fused.parameters()], g)
    gb = torch.autograd.grad(yb, [b, *ref.parameters()], g)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_forward_maps_end_to_end():
    torch.manual_seed(0)
    B, C, h, w = 2, 24, 3, 4
    m = MultimodalTemporalFusion(in_dims=C, embed_dims=32, num_layers=1, num_heads=4)
    tpe = TemporalPositionEncoding(C)
    hr, s2, s1 = torch.randn(B, C, h, w), torch.randn(B, 5, C, h, w), torch.randn(B, 3, C, h, w)
    doy = torch.randint(1, 367, (B, 5))
    valid = torch.rand(B, 5) > 0.4
    out = m.forward_maps(hr, s2, s1, date_table=tpe.ctpe, doy_s2=doy, valid_s2=valid)
    assert out.shape == (B, 32, h, w)
    tokens, mask = fusion_tokens_reference(hr, s2, s1, doy_s2=doy, valid_s2=valid, date_table=tpe.ctpe)
    torch.testing.assert_close(out, m(tokens, mask).view(B, h, w, 32).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    # S2 only, nothing else present
    assert m.forward_maps(s2=s2).shape == (B, 32, h, w)
    with pytest.raises(ValueError, match="days of year"):
        tpe(torch.tensor([0]))
