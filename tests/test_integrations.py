"""The encoders through timm (create_model by name, features_only, out_indices, feature_info,
pretrained_cfg, weights read by timm and mapped) and through TerraTorch's backbone registry
(its documented interface: ``register`` by name, ``build(name, **kwargs)``, ``out_channels``,
a list of NCHW maps)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

timm = pytest.importorskip("timm")

from skysense_fast import models, save_pretrained  # noqa: E402
from skysense_fast.integrations import terratorch_backbones as tt  # noqa: E402
from skysense_fast.integrations import timm_models  # noqa: E402  (registers the models)
from skysense_fast.weights import save_weights  # noqa: E402


def _skysense(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return models.create("skysense-tiny", **kw).eval()


def _hr_file(model, path):
    """The official HR backbone file's layout: ``backbone.`` keys, a mask token, a rebuilt buffer."""
    sd = {f"backbone.{k}": v.clone() for k, v in model.hr.state_dict().items()}
    sd["backbone.mask_token"] = torch.zeros(1, 1, model.config.hr_embed_dim)
    torch.save(sd, path)
    return str(path)


def test_every_encoder_is_registered_by_name():
    names = timm.list_models("skysense_*")
    assert set(timm_models.MODEL_NAMES) <= set(names)
    assert {"skysense_swinv2_huge", "skysense_vit_large_s2", "skysense_vit_large_s1"} <= set(names)


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 2), (-1,)])
def test_features_only_returns_the_stages_with_their_feature_info(out_indices):
    m = timm.create_model("skysense_swinv2_tiny", features_only=True, out_indices=out_indices).eval()
    x = torch.randn(2, 3, 64, 96)
    outs = m(x)
    taken = sorted(i % 4 for i in out_indices)
    assert m.feature_info.channels() == [16 * 2 ** i for i in taken]
    assert m.feature_info.reduction() == [4 * 2 ** i for i in taken]
    assert [tuple(o.shape) for o in outs] == [(2, c, 64 // r, 96 // r) for c, r in
                                             zip(m.feature_info.channels(), m.feature_info.reduction(), strict=True)]
    assert len(m.model.encoder.stages) == taken[-1] + 1      # the stages past the last taken are not run


def test_the_huge_encoder_has_the_paper_widths():
    with torch.device("meta"):
        m = timm.create_model("skysense_swinv2_huge", features_only=True)
    assert m.feature_info.channels() == [352, 704, 1408, 2816] and m.feature_info.reduction() == [4, 8, 16, 32]
    cfg = timm.create_model("skysense_swinv2_tiny").pretrained_cfg
    assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406), abs=1e-6) and cfg["num_classes"] == 0


def test_official_hr_weights_read_by_timm_give_skysense_features(tmp_path):
    src = _skysense(1)
    path = _hr_file(src, tmp_path / "skysense_model_backbone_hr.pth")
    m = timm.create_model("skysense_swinv2_tiny", pretrained=True, features_only=True,
                          pretrained_cfg_overlay={"file": path}).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[3], src.hr(x)[-1], rtol=0, atol=0)
    # this package's weights of a whole model (hr.* keys), and a save_pretrained folder's file
    save_weights(src, tmp_path / "w.safetensors")
    save_pretrained(src, tmp_path / "hub")
    for file in (tmp_path / "w.safetensors", tmp_path / "hub" / "model.safetensors"):
        c = timm.create_model("skysense_swinv2_tiny", pretrained=True, num_classes=4,
                              pretrained_cfg_overlay={"file": str(file)}).eval()
        with torch.no_grad():
            torch.testing.assert_close(c.forward_features(x), src.hr(x)[-1], rtol=0, atol=0)
            assert c(x).shape == (1, 4) and c.forward_head(c.forward_features(x), pre_logits=True).shape == (1, 128)


def test_rgb_weights_for_an_rgbnir_encoder_follow_the_official_rule(tmp_path):
    src = _skysense(2)
    path = _hr_file(src, tmp_path / "hr.pth")
    m = timm.create_model("skysense_swinv2_tiny", pretrained=True, in_chans=4, pretrained_cfg_overlay={"file": path})
    w = m.encoder.patch_embed.projection.weight
    torch.testing.assert_close(w[:, 3], src.hr.patch_embed.projection.weight[:, 0], rtol=0, atol=0)


def test_sentinel_encoders_through_timm(tmp_path):
    src = _skysense(3)
    torch.save({k: v.clone() for k, v in src.s2.state_dict().items()} | {"ctpe": src.ctpe.ctpe.detach()},
               tmp_path / "s2.pth")
    m = timm.create_model("skysense_vit_tiny_s2", pretrained=True, features_only=True, out_indices=(0, -1),
                          pretrained_cfg_overlay={"file": str(tmp_path / "s2.pth")}).eval()
    x = torch.randn(2, 10, 16, 20)
    with torch.no_grad():
        first, last = m(x)
        torch.testing.assert_close(last, src.s2(x), rtol=0, atol=0)
    assert first.shape == last.shape == (2, 32, 4, 5) and m.feature_info.channels() == [32, 32]
    assert timm.create_model("skysense_vit_tiny_s1", num_classes=3)(torch.randn(2, 2, 16, 16)).shape == (2, 3)


def test_timm_misuse_is_refused_by_name():
    with pytest.raises(RuntimeError, match="No pretrained weights exist for skysense_swinv2_tiny"):
        timm.create_model("skysense_swinv2_tiny", pretrained=True)
    m = timm.create_model("skysense_swinv2_tiny")
    with pytest.raises(ValueError, match="output_fmt"):
        m.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NHWC")
    with pytest.raises(ValueError, match="indices must lie in"):
        m.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[4])
    with pytest.raises(ValueError, match="reads 10 bands"):
        timm.create_model("skysense_vit_tiny_s2", in_chans=3)


class _Registry:
    """TerraTorch's Registry as documented: a set of constructors stored by ``__name__``
    through ``register``, built with ``build(name, **kwargs)``."""

    def __init__(self):
        self.items = {}

    def register(self, constructor):
        self.items[constructor.__name__] = constructor
        return constructor

    def __contains__(self, name):
        return name in self.items

    def build(self, name, *args, **kwargs):
        return self.items[name](*args, **kwargs)


def test_terratorch_backbones_register_and_build(tmp_path):
    registry = _Registry()
    tt.register(registry)
    tt.register(registry)                       # twice: nothing changes
    assert {"skysense_hr", "skysense_s2", "skysense_s1"} <= set(registry.items)
    src = _skysense(4)
    path = _hr_file(src, tmp_path / "hr.pth")
    bb = registry.build("skysense_hr", pretrained=True, config="skysense-tiny", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = bb(x)
    assert isinstance(maps, list) and bb.out_channels == [m.shape[1] for m in maps] == [16, 32, 64, 128]
    torch.testing.assert_close(maps[-1], src.hr(x)[-1], rtol=0, atol=0)
    save_pretrained(src, tmp_path / "hub")
    s1 = registry.build("skysense_s1", config="skysense-tiny", weights=str(tmp_path / "hub"), out_indices=[0, 1])
    y = torch.randn(3, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(s1(y)[-1], src.s1(y), rtol=0, atol=0)
    assert s1.out_channels == [32, 32]


def test_terratorch_misuse_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no SkySense weights are hosted"):
        tt.skysense_hr(pretrained=True, config="skysense-tiny")
    with pytest.raises(ValueError, match=r"unknown backbone argument\(s\) \['bands'\]"):
        tt.skysense_hr(config="skysense-tiny", bands=["RED"])
    with pytest.raises(ValueError, match="out_indices must lie in"):
        tt.skysense_hr(config="skysense-tiny", out_indices=[7])
    torch.save({"backbone.nothing": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not match the hr encoder"):
        tt.skysense_hr(config="skysense-tiny", weights=str(tmp_path / "bad.pth"))


def test_importing_under_terratorch_registers_in_its_registry(monkeypatch):
    """TerraTorch imports a custom_modules file that imports ours: the backbones land in its
    TERRATORCH_BACKBONE_REGISTRY (a stand-in module here: TerraTorch needs Python >= 3.12's
    torchgeo and does not install beside this project)."""
    import importlib

    registry = _Registry()
    fake = types.ModuleType("terratorch")
    fake.registry = types.ModuleType("terratorch.registry")
    fake.registry.TERRATORCH_BACKBONE_REGISTRY = registry
    monkeypatch.setitem(sys.modules, "terratorch", fake)
    monkeypatch.setitem(sys.modules, "terratorch.registry", fake.registry)
    importlib.reload(tt)
    assert "skysense_hr" in registry and "skysense_s2" in registry
