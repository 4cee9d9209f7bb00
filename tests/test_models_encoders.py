"""SkySense encoders: official parameter layout and counts, forward semantics."""

from __future__ import annotations

import pytest
import torch

import skysense_fast
from skysense_fast.models import SwinV2Encoder, UPHead, ViTEncoder
from skysense_fast.models.swinv2 import PatchMerging
from skysense_fast.nn import MultimodalTemporalFusion, TemporalPositionEncoding


def count(m) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def test_official_parameter_counts_by_part(capsys):
    """SKYSENSE_SPEC.md §1, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        parts = {"Swin-H (HR)": (SwinV2Encoder(), 655.07), "ViT-L (S2)": (ViTEncoder(10), 302.74),
                 "ViT-L (S1)": (ViTEncoder(2), 302.61), "fusion": (MultimodalTemporalFusion(), 305.20),
                 "UPHead (S2)": (UPHead(), 46.18), "UPHead (S1)": (UPHead(), 46.18),
                 "date table (ctpe)": (TemporalPositionEncoding(), 1.03)}
    total = 0.0
    with capsys.disabled():
        print("\n| part | parameters (M) | official (M) |\n|---|---|---|")
        for name, (m, want) in parts.items():
            n = count(m)
            total += n
            print(f"| {name} | {n:.2f} | {want:.2f} |")
        print(f"| inference model | {total:.2f} | 1659 |")
    for name, (m, want) in parts.items():
        assert round(count(m), 2) == want, name
    assert round(total) == 1659


def test_swin_h_keys_match_the_official_layout():
    with torch.device("meta"):
        sd = {k: tuple(v.shape) for k, v in SwinV2Encoder().state_dict().items()}
    expect = {
        "patch_embed.projection.weight": (352, 3, 4, 4), "patch_embed.norm.weight": (352,),
        "stages.1.downsample.reduction.weight": (704, 1408), "stages.3.downsample.reduction.weight": (2816, 5632),
        "stages.1.downsample.norm.weight": (704,),
        "stages.0.blocks.0.attn.w_msa.logit_scale": (8, 1, 1), "stages.3.blocks.1.attn.w_msa.logit_scale": (64, 1, 1),
        "stages.2.blocks.4.attn.w_msa.q_bias": (1408,), "stages.2.blocks.4.attn.w_msa.v_bias": (1408,),
        "stages.0.blocks.1.attn.w_msa.cpb_mlp.0.weight": (512, 2), "stages.0.blocks.1.attn.w_msa.cpb_mlp.2.weight": (8, 512),
        "stages.2.blocks.0.attn.w_msa.qkv.weight": (4224, 1408), "stages.2.blocks.0.attn.w_msa.proj.weight": (1408, 1408),
        "stages.1.blocks.0.ffn.layers.0.0.weight": (2816, 704), "stages.1.blocks.0.ffn.layers.1.weight": (704, 2816),
        "stages.2.blocks.5.norm3.weight": (1408,), "stages.2.blocks.17.norm3.weight": (1408,), "norm3.weight": (2816,),
    }
    for k, shape in expect.items():
        assert sd.get(k) == shape, k
    assert "stages.0.downsample.reduction.weight" not in sd and "stages.0.blocks.0.attn.w_msa.qkv.bias" not in sd
    assert sorted(k for k in sd if k.endswith("norm3.weight")) == sorted(
        ["norm3.weight"] + [f"stages.2.blocks.{b}.norm3.weight" for b in (5, 11, 17)])


def test_patch_merging_uses_unfold_channel_major_order():
    torch.manual_seed(0)
    m = PatchMerging(3, 5)
    x = torch.randn(2, 4, 6, 3)
    unfolded = torch.nn.functional.unfold(x.permute(0, 3, 1, 2), 2, stride=2)  # (B, C*4, L), mmcls's way
    ref = m.norm(m.reduction(unfolded.transpose(1, 2).reshape(2, 2, 3, 12)))
    torch.testing.assert_close(m(x), ref)


def tiny_swin(**kw):
    return SwinV2Encoder(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), window_size=4,
                         extra_norm_every_n_blocks=2, **kw)


@pytest.mark.parametrize("size", [(64, 64), (70, 45)], ids=["64", "70x45 (not a multiple of 32)"])
def test_swin_forward_shapes_and_reference_backend(size):
    torch.manual_seed(0)
    m = tiny_swin(in_chans=4, out_indices=(0, 1, 2, 3))
    x = torch.randn(2, 4, *size, requires_grad=True)
    outs = m(x)
    H, W = -(-size[0] // 4), -(-size[1] // 4)
    for i, o in enumerate(outs):
        assert o.shape == (2, 16 * 2 ** i, H, W)
        H, W = -(-H // 2), -(-W // 2)
    with skysense_fast.use_backend("reference"):
        ref = m(x)
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in m.parameters()), [n for n, p in m.named_parameters() if p.grad is None]
    with pytest.raises(ValueError, match="expected \\(B, 4, H, W\\)"):
        m(torch.randn(1, 3, 32, 32))


def test_vit_and_uphead():
    torch.manual_seed(0)
    vit = ViTEncoder(in_chans=10, embed_dim=32, depth=2, num_heads=4, img_size=16)
    head = UPHead(32, 24)
    x = torch.randn(6, 10, 16, 16)  # (B x T) acquisitions folded
    y = vit(x)
    assert y.shape == (6, 32, 4, 4) and head(y).shape == (6, 24, 16, 16)
    assert vit(torch.randn(2, 10, 24, 20)).shape == (2, 32, 6, 5)  # position grid resized
    with skysense_fast.use_backend("reference"):
        torch.testing.assert_close(vit(x), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected \\(N, 10, H, W\\)"):
        vit(torch.randn(2, 2, 16, 16))
    # the official 64 x 64 tiles: 257 tokens, past the fused op's 256, served by SDPA
    big = ViTEncoder(in_chans=2, embed_dim=32, depth=1, num_heads=4, img_size=64)
    x = torch.randn(2, 2, 64, 64)
    ref = ViTEncoder(in_chans=2, embed_dim=32, depth=1, num_heads=4, img_size=64)
    ref.load_state_dict(big.state_dict())
    for layer in ref.layers:
        layer.forward = lambda x, m=None, fused=True, _l=layer: type(_l).forward(_l, x, m, False)
    torch.testing.assert_close(big(x), ref(x), rtol=1e-5, atol=1e-5)


def test_uphead_gemm_path_equals_conv_and_pixel_shuffle():
    from skysense_fast.models.vit import UPHead

    torch.manual_seed(0)
    head = UPHead(24, 10, scale=4)
    for shape in ((2, 24, 3, 5), (1, 24, 1, 1)):
        x = torch.randn(shape, requires_grad=True)
        y = head(x)
        ref = head.decoder(x)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, head.decoder[0].weight), g)
        rx, rw = torch.autograd.grad(ref, (x, head.decoder[0].weight), g)
        torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-5)
