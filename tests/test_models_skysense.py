"""The SkySense assembly on the tiny config: every modality subset, reference backend,
gradients, bad input, geo-context."""

from __future__ import annotations

import itertools

import pytest
import torch

import skysense_fast
from skysense_fast import models
from skysense_fast.models import region_index

B, h, w = 2, 4, 4


def inputs(gen):
    return dict(hr=torch.randn(B, 3, 32 * h, 32 * w, generator=gen),
                s2=torch.randn(B, 3, 10, h, w, generator=gen), s1=torch.randn(B, 2, 2, h, w, generator=gen),
                doy_s2=torch.randint(1, 367, (B, 3), generator=gen), doy_s1=torch.randint(1, 367, (B, 2), generator=gen),
                valid_s2=torch.tensor([[True, True, False], [True, True, True]]),
                latlon=torch.tensor([[48.8, 2.3], [-33.9, 151.2]]))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.create("skysense-tiny").eval()


SUBSETS = [c for r in (1, 2, 3) for c in itertools.combinations(("hr", "s2", "s1"), r)]


@pytest.mark.parametrize("mods", SUBSETS, ids=["+".join(c) for c in SUBSETS])
def test_every_modality_subset_matches_the_reference_backend(model, mods):
    x = inputs(torch.Generator().manual_seed(0))
    kw = {k: v for k, v in x.items() if k == "latlon" or any(k.endswith(m) for m in mods)}
    with torch.no_grad():
        out = model(**kw)
        with skysense_fast.use_backend("reference"):
            ref = model(**kw)
    assert out["fused"].shape == (B, 64, h, w) and out["geo"].shape == (B, 128, h, w)
    for name in ("hr", "s2", "s1"):
        assert (out[name] is None) == (name not in mods)
    for k in ("fused", "geo"):
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = models.create("skysense-tiny", date_embedding=("s2", "s1"))
    out = m(**inputs(torch.Generator().manual_seed(0)))
    (out["geo"].square().mean() + out["hr"].mean()).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_grad_checkpointing_gives_the_same_gradients():
    x = inputs(torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = models.create("skysense-tiny").set_grad_checkpointing(ckpt).train()
        m(**x)["geo"].square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bad_input(model):
    x = inputs(torch.Generator().manual_seed(0))
    cases = [
        (dict(hr=x["hr"][:, :2]), "hr must have shape \\(B, 3, H, W\\) \\(3 bands\\)"),
        (dict(s2=x["s2"][:, :, :4], doy_s2=x["doy_s2"]), "s2 must have shape \\(B, T, 10, h, w\\) \\(10 bands\\)"),
        (dict(s2=x["s2"]), "doy_s2\\) are required"),
        (dict(hr=x["hr"][..., :96], s2=x["s2"], doy_s2=x["doy_s2"]), "do not share the fusion grid"),
        (dict(s1=x["s1"], doy_s1=x["doy_s1"], latlon=torch.tensor([[95.0, 0.0], [0.0, 0.0]])), "geolocation out of range"),
        (dict(), "at least one of hr, s2, s1"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model(**kw)
    with pytest.raises(ValueError, match="unknown SkySense config 'skysense-9b'"):
        models.create("skysense-9b")


def test_region_rule():
    ll = torch.tensor([[-90.0, -180.0], [90.0, 180.0], [0.0, 0.0], [-0.1, -0.1]])
    assert region_index(ll, 4096).tolist() == [0, 63 * 64, 32 * 64 + 32, 31 * 64 + 31]


def test_named_configs_and_the_2b_count(capsys):
    assert models.list_configs() == ["skysense-2b", "skysense-base", "skysense-tiny"]
    with torch.device("meta"):
        m = models.create("skysense-2b")
    parts = {n: sum(p.numel() for p in c.parameters()) / 1e6 for n, c in m.named_children()}
    bank = m.geo.prototypes.numel() / 1e6
    with capsys.disabled():
        print("\n" + "\n".join(f"| {n} | {v:.2f} M |" for n, v in parts.items()) + f"\n| geo bank (buffer) | {bank:.2f} M |")
    assert round(sum(parts.values())) == 1659 and bank == pytest.approx(419.43, abs=0.01)


def test_hr_stages_for_dense_heads(gen):
    """config.hr_stages returns the HR stage maps (official norm names, strides 4-32) beside
    the usual outputs, which stay as they were."""
    torch.manual_seed(0)
    plain = models.create("skysense-tiny").eval()
    torch.manual_seed(0)
    dense = models.create("skysense-tiny", hr_stages=(0, 1, 2, 3)).eval()
    dense.load_state_dict(plain.state_dict(), strict=False)  # norm0-2 are its own
    x = inputs(gen)
    with torch.no_grad():
        a, b = plain(**x), dense(**x)
    for key in ("hr", "s2", "s1", "fused", "geo"):
        torch.testing.assert_close(a[key], b[key])
    info = dense.hr_feature_info()
    assert [i["reduction"] for i in info] == [4, 8, 16, 32] and [i["module"] for i in info] == [
        "hr.norm0", "hr.norm1", "hr.norm2", "hr.norm3"]
    H, W = x["hr"].shape[-2:]
    for f, i in zip(b["hr_stages"], info):
        assert f.shape == (B, i["num_chs"], H // i["reduction"], W // i["reduction"])
    torch.testing.assert_close(b["hr_stages"][-1], b["hr"])
    assert "hr_stages" not in a
    with pytest.raises(ValueError, match="hr_stages must be stage indices in 0..3"):
        models.create("skysense-tiny", hr_stages=(4,))


def test_model_states_its_blocks_and_layer_groups(model):
    """What the trainer shards and decays comes from the model, not from matching names."""
    cfg = model.config
    blocks = model.blocks()
    assert len(blocks) == len({id(b) for b in blocks}) == sum(cfg.hr_depths) + 2 * cfg.vit_depth + cfg.fusion_layers
    groups = model.layer_groups()
    encoders = {n for n, _ in model.named_parameters() if n.startswith(("hr.", "s2.", "s1."))}
    assert set(groups) == encoders
    n = sum(cfg.hr_depths)
    assert groups["hr.patch_embed.projection.weight"] == (0, n) and groups[f"hr.norm{len(cfg.hr_depths) - 1}.weight"] == (n, n)
    assert groups["s1.layers.0.ln1.weight"] == (1, cfg.vit_depth) and groups["s2.pos_embed"] == (0, cfg.vit_depth)
