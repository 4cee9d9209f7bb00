"""SkySense's encoders as TerraTorch backbones: ``backbone: skysense_hr`` (or ``skysense_s2``,
``skysense_s1``) in a TerraTorch YAML, with ``backbone_config``, ``backbone_weights`` and
``backbone_out_indices`` passed on (TerraTorch strips the ``backbone_`` prefix).

TerraTorch has no plugin entry point: it imports the modules of its ``custom_modules_path``
(or ``./custom_modules``); a file there holding ``import skysense_fast.integrations.terratorch_backbones``
registers these backbones in ``TERRATORCH_BACKBONE_REGISTRY``. A backbone is what TerraTorch's
encoder-decoder factory expects: a module with ``out_channels`` (one width per returned map)
whose forward returns a list of NCHW maps.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import InputError
from ..models.config import get_config
from ..models.swinv2 import SwinV2Encoder
from ..models.vit import ViTEncoder
from ..weights.checks import check_tensor
from ..weights.official import encoder_state, read_checkpoint


def _load(encoder: nn.Module, weights: str | os.PathLike, branch: str, keep_at_init: tuple[str, ...] = ()) -> None:
    """``weights`` (an official backbone file, this package's weights or a save_pretrained
    folder / hub id) into a bare encoder, every tensor checked before any is copied."""
    from ..weights.folders import looks_like_repo_id, weights_file

    path = os.fspath(weights)
    if os.path.isdir(path) or looks_like_repo_id(path):
        path = weights_file(path)
    own = encoder.state_dict()
    state = encoder_state(read_checkpoint(path), own, branch)
    missing = sorted(k for k in own if k not in state and not k.startswith(keep_at_init))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise InputError(f"backbone_weights {path}: does not match the {branch} encoder (missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]})")
    for k, v in state.items():
        check_tensor(f"{path}: {k}", v, own[k])
    encoder.load_state_dict(state, strict=False)


class SkySenseHRBackbone(nn.Module):
    """The HR SwinV2 encoder; returns the maps of ``out_indices`` (strides 4, 8, 16, 32),
    each through its output norm (the released file holds the last stage's; the others start
    at init, as the official fine-tuning configs meet them)."""

    def __init__(self, config: str = "skysense-2b", weights: str | None = None,
                 out_indices: Sequence[int] = (0, 1, 2, 3), in_chans: int = 3):
        super().__init__()
        cfg = get_config(config, hr_in_chans=in_chans)
        n = len(cfg.hr_depths)
        out = tuple(sorted({i + n if i < 0 else i for i in out_indices}))
        if not out or out[0] < 0 or out[-1] >= n:
            raise InputError(f"backbone_out_indices must lie in [-{n}, {n}), got {list(out_indices)}")
        self.encoder = SwinV2Encoder(in_chans, cfg.hr_embed_dim, cfg.hr_depths, cfg.hr_heads, cfg.window_size,
                                     extra_norm_every_n_blocks=cfg.extra_norm_every_n_blocks, out_indices=out)
        self.out_channels = [self.encoder.dims[i] for i in out]
        if weights is not None:
            _load(self.encoder, weights, "hr", keep_at_init=tuple(f"norm{i}." for i in out if i != n - 1))

    def forward(self, x: Tensor, **kwargs) -> list[Tensor]:
        return list(self.encoder(x))


class SkySenseViTBackbone(nn.Module):
    """A Sentinel-2 or Sentinel-1 ViT encoder on one image (B, bands, H, W); returns the
    patch-token maps (stride 4) after the layers of ``out_indices`` (default the last)."""

    def __init__(self, modality: str, config: str = "skysense-2b", weights: str | None = None,
                 out_indices: Sequence[int] = (-1,)):
        super().__init__()
        if modality not in ("s2", "s1"):
            raise InputError(f"modality must be s2 or s1, got {modality!r}")
        cfg = get_config(config)
        n = cfg.vit_depth
        self.out_indices = tuple(sorted({i + n if i < 0 else i for i in out_indices}))
        if not self.out_indices or self.out_indices[0] < 0 or self.out_indices[-1] >= n:
            raise InputError(f"backbone_out_indices must lie in [-{n}, {n}), got {list(out_indices)}")
        bands = cfg.s2_in_chans if modality == "s2" else cfg.s1_in_chans
        self.encoder = ViTEncoder(bands, cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, img_size=cfg.vit_img_size)
        self.out_channels = [cfg.vit_dim] * len(self.out_indices)
        if weights is not None:
            _load(self.encoder, weights, modality)

    def forward(self, x: Tensor, **kwargs) -> list[Tensor]:
        return self.encoder.layer_maps(x, self.out_indices)


def skysense_hr(pretrained: bool = False, config: str = "skysense-2b", weights: str | None = None,
                out_indices: Sequence[int] = (0, 1, 2, 3), in_chans: int = 3, **kwargs) -> SkySenseHRBackbone:
    """SkySense's HR encoder. No weights are hosted: ``pretrained`` needs ``weights``."""
    _check(pretrained, weights, kwargs)
    return SkySenseHRBackbone(config, weights, out_indices, in_chans)


def skysense_s2(pretrained: bool = False, config: str = "skysense-2b", weights: str | None = None,
                out_indices: Sequence[int] = (-1,), **kwargs) -> SkySenseViTBackbone:
    """SkySense's Sentinel-2 encoder (bands B2..B8, B8A, B11, B12 as L2A digital numbers)."""
    _check(pretrained, weights, kwargs)
    return SkySenseViTBackbone("s2", config, weights, out_indices)


def skysense_s1(pretrained: bool = False, config: str = "skysense-2b", weights: str | None = None,
                out_indices: Sequence[int] = (-1,), **kwargs) -> SkySenseViTBackbone:
    """SkySense's Sentinel-1 encoder (VV, VH in dB)."""
    _check(pretrained, weights, kwargs)
    return SkySenseViTBackbone("s1", config, weights, out_indices)


# the encoder-decoder factory reads these from backbone_* too (its own padding to whole
# patches) and passes them on; any size runs here, so they change nothing
_IGNORED = {"patch_size", "padding"}


def _check(pretrained: bool, weights: str | None, kwargs: dict) -> None:
    if pretrained and weights is None:
        raise InputError("backbone_pretrained: no SkySense weights are hosted; give backbone_weights (an official "
                         "backbone file, a skysense_fast weights file or a save_pretrained folder / hub id)")
    unknown = sorted(set(kwargs) - _IGNORED)
    if unknown:
        raise InputError(f"unknown backbone argument(s) {unknown} (known: config, weights, out_indices, in_chans; "
                         "the bands are fixed per encoder: RGB (+ NIR with in_chans 4), S2 B2..B12, S1 VV, VH)")


BACKBONES = (skysense_hr, skysense_s2, skysense_s1)


def register(registry=None) -> None:
    """Adds the backbones to ``registry`` (default TerraTorch's TERRATORCH_BACKBONE_REGISTRY),
    through its ``register`` decorator; names already there are left alone."""
    if registry is None:
        from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY

        registry = TERRATORCH_BACKBONE_REGISTRY
    for fn in BACKBONES:
        if fn.__name__ not in registry:
            registry.register(fn)


try:   # imported from a TerraTorch custom_modules folder: register at once
    import terratorch.registry  # noqa: F401
except ImportError:
    pass
else:
    register()
