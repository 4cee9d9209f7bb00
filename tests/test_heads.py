"""Task heads: UPerNet over the HR stages (mmseg's names and setting), scene classification."""

from __future__ import annotations

import pytest
import torch

from skysense_fast import models
from skysense_fast.heads import SceneClassifier, UPerNetHead


@pytest.fixture(scope="module")
def dense():
    torch.manual_seed(0)
    return models.create("skysense-tiny", hr_stages=(0, 1, 2, 3)).eval()


def test_upernet_on_the_hr_stages_and_the_fused_map(dense):
    g = torch.Generator().manual_seed(0)
    hr = torch.randn(2, 3, 128, 96, generator=g)
    s2 = torch.randn(2, 3, 10, 4, 3, generator=g)
    with torch.no_grad():
        out = dense(hr, s2, doy_s2=torch.tensor([[10, 100, 200]] * 2))
    chans = [i["num_chs"] for i in dense.hr_feature_info()]
    head = UPerNetHead(chans, num_classes=5, channels=32, extra_channels=dense.config.fusion_dim)
    logits = head(out["hr_stages"], extra=out["fused"])
    assert logits.shape == (2, 5, 32, 24)  # stride 4
    logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match="built for an extra map of 64 channels"):
        head(out["hr_stages"])
    with pytest.raises(ValueError, match=r"map 1 must be \(B, 32, H, W\)"):
        head([out["hr_stages"][0]] * 4, extra=out["fused"])
    # one level: PSP pooling + bottleneck on the fused map (the S2 / S1-only setting)
    single = UPerNetHead([dense.config.fusion_dim], num_classes=3, channels=16)
    assert single(out["fused"].detach()).shape == (2, 3, 4, 3)


def test_upernet_has_mmsegs_names_and_the_official_recipe_size():
    """mmseg UPerHead keys (SkySense's iSAID config: SwinV2-H stages, 512 channels), so a
    fine-tuned mmseg state dict maps key for key; built on meta."""
    with torch.device("meta"):
        head = UPerNetHead([352, 704, 1408, 2816], num_classes=16, channels=512)
    keys = set(head.state_dict())
    for k in ("psp_modules.0.1.conv.weight", "psp_modules.3.1.bn.running_var", "bottleneck.conv.weight",
              "lateral_convs.2.conv.weight", "fpn_convs.0.bn.weight", "fpn_bottleneck.conv.weight", "conv_seg.weight",
              "conv_seg.bias"):
        assert k in keys, k
    assert head.bottleneck.conv.weight.shape == (512, 2816 + 4 * 512, 3, 3)
    assert head.fpn_bottleneck.conv.weight.shape == (512, 4 * 512, 3, 3)


def test_upernet_learns_a_pattern():
    """A few steps fit a class map that depends on both a fine and a coarse feature."""
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    target = ((feats[0][:, 0] > 0) ^ (torch.nn.functional.interpolate(feats[1][:, :1], size=(16, 16))[:, 0] > 0)).long()
    head = UPerNetHead([8, 16], num_classes=2, channels=16, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(feats), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("multi_label", [False, True])
def test_scene_classifier_fits_and_predicts(multi_label):
    torch.manual_seed(0)
    x = torch.randn(16, 12, 3, 3)
    if multi_label:
        y = (x.mean((2, 3))[:, :4] > 0).float()
    else:
        y = x.mean((2, 3))[:, :4].argmax(1)
    clf = SceneClassifier(12, 4, multi_label=multi_label)
    opt = torch.optim.Adam(clf.parameters(), lr=5e-2)
    for _ in range(100):
        loss = clf.loss(clf(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pred = clf.predict(clf(x))
    assert (pred == y.bool() if multi_label else pred == y).float().mean() > 0.9
    assert clf(x.mean((2, 3))).shape == (16, 4)
    with pytest.raises(ValueError, match=r"expected \(B, 12, h, w\)"):
        clf(torch.randn(2, 5, 3, 3))
