"""Drop-in window attention modules and accelerate() against timm's Swin / SwinV2."""

from __future__ import annotations

import copy

import pytest
import torch

import skysense_fast
from skysense_fast.nn import (SwinTransformerBlock, SwinTransformerV2Block, WindowAttention, WindowAttentionV2,
                              accelerate)
from skysense_fast.ops import window_attention_reference

timm = pytest.importorskip("timm")
from timm.models import swin_transformer as tv1  # noqa: E402
from timm.models import swin_transformer_v2 as tv2  # noqa: E402


def perturb(module, gen, scale=0.05):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def compare(a, b, *inputs, atol=1e-5, call=None):
    """Outputs and the gradients of inputs and of every parameter (same names) agree."""
    call = call or (lambda m, *x: m(*x))
    xa = [x.clone().requires_grad_() for x in inputs]
    xb = [x.clone().requires_grad_() for x in inputs]
    ya, yb = call(a, *xa), call(b, *xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=atol)
    g = torch.randn_like(ya)
    names = [n for n, _ in a.named_parameters()]
    pb = dict(b.named_parameters())
    ga = torch.autograd.grad(ya, xa + [p for _, p in a.named_parameters()], g)
    gb = torch.autograd.grad(yb, xb + [pb[n] for n in names], g)
    for name, x, y in zip(["input"] * len(xa) + names, ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=atol * 10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("window", [(8, 8), (7, 7), (4, 6)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_v2_module_matches_timm(window, with_mask):
    gen = torch.Generator().manual_seed(0)
    ref = tv2.WindowAttention(32, window, 4, pretrained_window_size=(0, 0))
    perturb(ref, gen)
    ours = WindowAttentionV2(32, window, 4)
    ours.load_state_dict(ref.state_dict())
    N = window[0] * window[1]
    x = torch.randn(6, N, 32, generator=gen)
    mask = torch.where(torch.rand(3, N, N, generator=gen) > 0.7, -100.0, 0.0) if with_mask else None
    compare(ours, ref, x, call=lambda m, t: m(t, mask))


@pytest.mark.parametrize("head_dim", [None, 12])
def test_v1_module_matches_timm(head_dim):
    gen = torch.Generator().manual_seed(0)
    ref = tv1.WindowAttention(32, 4, head_dim=head_dim, window_size=7)
    ref.fused_attn = False
    perturb(ref, gen)
    ours = WindowAttention(32, 4, head_dim=head_dim, window_size=7)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 49, 32, generator=gen)
    mask = torch.where(torch.rand(2, 49, 49, generator=gen) > 0.7, -100.0, 0.0)
    compare(ours, ref, x, call=lambda m, t: m(t, mask))


def small_v2(img_size):
    return tv2.SwinTransformerV2(img_size=img_size, patch_size=4, window_size=8, embed_dim=32, depths=(2, 2),
                                 num_heads=(2, 4), num_classes=10, drop_path_rate=0.0)


def small_v1(img_size):
    return tv1.SwinTransformer(img_size=img_size, patch_size=4, window_size=4, embed_dim=32, depths=(2, 2),
                               num_heads=(2, 4), num_classes=10, drop_path_rate=0.0)


@pytest.mark.parametrize("make,img_size,fused_blocks", [
    (small_v2, 64, 4),          # maps 16x16 and 8x8: every block fused at the block level
    (small_v2, (64, 96), 4),    # 16x24 and 8x12 (shrunk windows stay whole)
    (small_v2, (72, 64), 4),    # 18x16: timm's roll/pad around the fused module
    (small_v1, 64, 4),
], ids=["v2-64", "v2-64x96", "v2-72x64", "v1-64"])
def test_accelerate_matches_unpatched(make, img_size, fused_blocks):
    torch.manual_seed(0)
    ref = make(img_size)
    if make is small_v1:
        for m in ref.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    perturb(ref, torch.Generator().manual_seed(1), 0.02)
    model = copy.deepcopy(ref)
    report = accelerate(model)
    assert len(report.attention) == 4 and len(report.blocks) == fused_blocks and not report.skipped
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = torch.randn(2, 3, *size)
    compare(model, ref, x, atol=2e-5)
    assert sum(isinstance(m, (WindowAttention, WindowAttentionV2)) for m in model.modules()) == 4


def test_accelerate_skips_attention_dropout():
    model = tv2.SwinTransformerV2(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1,), num_heads=(2,),
                                  attn_drop_rate=0.1)
    report = accelerate(model)
    assert report.attention == [] and "attn_drop" in report.skipped[0][1]
    with pytest.raises(ValueError, match="attention dropout"):
        WindowAttentionV2(16, 4, 2, attn_drop=0.1)


def test_position_bias_cache_follows_the_weights():
    m = WindowAttentionV2(16, 4, 2).eval()
    with torch.no_grad():
        b1 = m.position_bias()
        assert m.position_bias() is b1  # cached in eval without autograd
        m.cpb_mlp[2].weight.add_(1.0)
        b2 = m.position_bias()
    assert not torch.equal(b1, b2)
    m.train()
    assert m.position_bias().requires_grad


def test_forward_spatial_needs_whole_windows():
    m = WindowAttentionV2(16, 4, 2)
    with pytest.raises(ValueError, match="multiple of the window"):
        m.forward_spatial(torch.randn(1, 6, 8, 16), 2)
    with pytest.raises(ValueError, match="tokens per window"):
        m(torch.randn(2, 15, 16))


def test_accelerated_model_under_reference_backend():
    torch.manual_seed(0)
    model = small_v2(64)
    ref = copy.deepcopy(model)
    accelerate(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), skysense_fast.use_backend("reference"):
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("res,window,shift", [((16, 16), 8, 4), ((8, 8), 8, 4), ((16, 24), 4, 2), ((6, 6), 8, 4)],
                         ids=["16x16-w8-s4", "8x8-w8 (no shift)", "16x24-w4-s2", "6x6 (window shrinks)"])
def test_v2_block_matches_timm(res, window, shift):
    gen = torch.Generator().manual_seed(0)
    ref = tv2.SwinTransformerV2Block(32, res, 4, window_size=window, shift_size=shift)
    perturb(ref, gen)
    ours = SwinTransformerV2Block(32, res, 4, window_size=window, shift_size=shift)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert (ours.window_size, ours.shift_size) == (tuple(ref.window_size), tuple(ref.shift_size))
    compare(ours, ref, torch.randn(2, *res, 32, generator=gen), atol=2e-5)


def test_v1_block_matches_timm():
    gen = torch.Generator().manual_seed(0)
    ref = tv1.SwinTransformerBlock(32, (14, 14), 4, window_size=7, shift_size=3)
    ref.attn.fused_attn = False
    perturb(ref, gen)
    ours = SwinTransformerBlock(32, (14, 14), 4, window_size=7, shift_size=3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    compare(ours, ref, torch.randn(2, 14, 14, 32, generator=gen), atol=2e-5)


def test_block_pads_before_rolling_like_official_swinv2():
    # 10 x 13 map, window 4, shift 2: pad to 12 x 16 before qkv, then roll (official order)
    gen = torch.Generator().manual_seed(0)
    blk = SwinTransformerV2Block(16, (10, 13), 2, window_size=4, shift_size=2)
    perturb(blk, gen)
    x = torch.randn(1, 10, 13, 16, generator=gen)
    a = blk.attn
    xp = torch.nn.functional.pad(x, (0, 0, 0, 3, 0, 2))
    q, k, v = a._qkv(xp).view(1, 12, 16, 3, 2, 8).unbind(3)
    o = window_attention_reference(q, k, v, (4, 4), (2, 2), logit_scale=a.logit_scale, bias=a.position_bias())
    expected = a.proj(o.reshape(1, 12, 16, 16))[:, :10, :13]
    torch.testing.assert_close(blk._attn(x), expected, rtol=1e-5, atol=1e-5)
