"""SkySense's encoders as timm models: importing this module registers them, after which
``timm.create_model("skysense_swinv2_huge", features_only=True)`` and the rest of timm's
conventions work (``out_indices``, ``feature_info``, ``pretrained_cfg`` with the inputs'
statistics, ``forward_features`` / ``forward_head``, ``num_classes``).

timm has no plugin hook: a model is known once the module defining it is imported, so
``import skysense_fast.integrations.timm_models`` comes before ``timm.create_model``.

Names: ``skysense_swinv2_{huge,base,tiny}`` (the HR encoder of skysense-2b / -base / -tiny;
four stages at strides 4, 8, 16, 32) and ``skysense_vit_{large,base,tiny}_{s2,s1}`` (the
Sentinel-2 / Sentinel-1 encoders, one image per call; every layer at stride 4). No weights
are hosted: load a file with ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` (the
official HR / S2 / S1 backbone files, this package's safetensors, or a save_pretrained
folder through ``dict(file=FOLDER + "/model.safetensors")``): timm reads it and
:func:`checkpoint_filter_fn` maps its keys. timm >= 1.0.31 is required: earlier releases read
such files with ``torch.load(weights_only=False)``, which runs whatever a pickle holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from ..data.normalisation import DEFAULT
from ..data.series import S1_BANDS, S2_BANDS
from ..errors import InputError
from ..models.config import get_config
from ..models.swinv2 import SwinV2Encoder
from ..models.vit import ViTEncoder
from ..weights.official import encoder_state

_TIMM = tuple(int(x) for x in timm.__version__.split(".")[:3] if x.isdigit())
if _TIMM < (1, 0, 31):
    raise ImportError(f"skysense_fast.integrations.timm_models needs timm >= 1.0.31 (found {timm.__version__}): "
                      "earlier releases load weight files with torch.load(weights_only=False)")

_SWIN = {"huge": "skysense-2b", "base": "skysense-base", "tiny": "skysense-tiny"}
_VIT = {"large": "skysense-2b", "base": "skysense-base", "tiny": "skysense-tiny"}
# timm feeds images scaled to 0-1: the HR statistics (on 0-255) divided by 255
_HR_MEAN = tuple(m / 255 for m in DEFAULT.hr_mean)
_HR_STD = tuple(s / 255 for s in DEFAULT.hr_std)


class _Classifier:
    """timm's head conventions on pooled features: ``num_classes`` (0: no head),
    ``global_pool`` ("avg" or ""), ``forward_head``, ``reset_classifier``."""

    num_features: int
    head_hidden_size: int
    num_classes: int
    global_pool: str
    drop_rate: float
    head: nn.Module
    training: bool

    def _init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float) -> None:
        if global_pool not in ("avg", ""):
            raise InputError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_features = self.head_hidden_size = num_features
        self.global_pool, self.drop_rate = global_pool, drop_rate
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) -> (B, C) pooled (or the map, with global_pool="") -> logits."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)


def _indices(indices: int | Sequence[int] | None, n: int) -> list[int]:
    """timm's index convention: None all, an int the last n, a list as given (negative from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise InputError(f"indices: the last 1..{n} layers, got {indices}")
        return list(range(n - indices, n))
    out = sorted({i + n if i < 0 else i for i in indices})
    if not out or out[0] < 0 or out[-1] >= n:
        raise InputError(f"indices must lie in [-{n}, {n}), got {list(indices)}")
    return out


def _nchw_only(output_fmt) -> None:
    if str(getattr(output_fmt, "value", output_fmt)) != "NCHW":
        raise InputError(f"output_fmt: these encoders return NCHW maps, got {output_fmt}")


class SkySenseSwinV2(_Classifier, nn.Module):
    """The HR encoder (``encoder``, a :class:`SwinV2Encoder`) under timm's conventions. Its
    stage outputs pass through their own LayerNorms (the layout of the official fine-tuning
    configs: the released file holds the last one; the others start at init);
    ``forward_features`` is the last stage (B, C, H/32, W/32), NCHW like timm's CNNs."""

    def __init__(self, config: str = "skysense-2b", in_chans: int = 3, num_classes: int = 0,
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        cfg = get_config(config, hr_in_chans=in_chans)
        n = len(cfg.hr_depths)
        self.encoder = SwinV2Encoder(in_chans, cfg.hr_embed_dim, cfg.hr_depths, cfg.hr_heads, cfg.window_size,
                                     extra_norm_every_n_blocks=cfg.extra_norm_every_n_blocks, out_indices=range(n))
        dims = self.encoder.dims
        self.feature_info = [{"num_chs": dims[i], "reduction": 4 * 2 ** i, "module": f"encoder.stages.{i}"}
                             for i in range(n)]
        self.output_fmt = "NCHW"
        self._init_head(dims[-1], num_classes, global_pool, drop_rate)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt="NCHW", intermediates_only: bool = False):
        """The maps of stages ``indices`` (each through its output norm; ``norm`` is the last
        stage's, applied as always), and the last stage unless ``intermediates_only``."""
        _nchw_only(output_fmt)
        take = _indices(indices, len(self.encoder.stages))
        maps = self.encoder(x)
        inter = [maps[i] for i in take]
        return inter if intermediates_only else (maps[-1], inter)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drops the stages after the last of ``indices`` (they are not run), and the head."""
        enc = self.encoder
        take = _indices(indices, len(enc.stages))
        keep = take[-1] + 1
        enc.stages, enc.dims, enc.out_indices = enc.stages[:keep], enc.dims[:keep], tuple(range(keep))
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        return self.encoder(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class SkySenseViT(_Classifier, ViTEncoder):
    """A Sentinel-2 / Sentinel-1 encoder under timm's conventions: one image (B, bands, H, W)
    per call (a series is its acquisitions in the batch); every layer's patch tokens as a
    (B, dim, H/4, W/4) map."""

    def __init__(self, config: str = "skysense-2b", modality: str = "s2", in_chans: int | None = None,
                 num_classes: int = 0, global_pool: str = "avg", drop_rate: float = 0.0):
        if modality not in ("s2", "s1"):
            raise InputError(f"modality must be s2 or s1, got {modality!r}")
        cfg = get_config(config)
        bands = cfg.s2_in_chans if modality == "s2" else cfg.s1_in_chans
        if in_chans is not None and in_chans != bands:
            raise InputError(f"in_chans: the {modality.upper()} encoder reads {bands} bands, got {in_chans}")
        ViTEncoder.__init__(self, bands, cfg.vit_dim, cfg.vit_depth, cfg.vit_heads, img_size=cfg.vit_img_size)
        self.modality = modality
        self.feature_info = [{"num_chs": cfg.vit_dim, "reduction": 4, "module": f"layers.{i}"}
                             for i in range(cfg.vit_depth)]
        self.output_fmt = "NCHW"
        self._init_head(cfg.vit_dim, num_classes, global_pool, drop_rate)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt="NCHW", intermediates_only: bool = False):
        """The maps after layers ``indices`` (the official ViT has no final norm: ``norm`` changes
        nothing), and the last layer's unless ``intermediates_only``."""
        _nchw_only(output_fmt)
        n = len(self.layers)
        take = _indices(indices, n)
        last = n - 1
        if intermediates_only:
            return self.layer_maps(x, tuple(take))
        maps = self.layer_maps(x, tuple(sorted(set(take) | {last})))
        by = dict(zip(sorted(set(take) | {last}), maps, strict=True))
        return by[last], [by[i] for i in take]

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take = _indices(indices, len(self.layers))
        self.layers = self.layers[:take[-1] + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        return ViTEncoder.forward(self, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """What timm read from a weights file -> this model's keys (:func:`encoder_state`: an
    official backbone file, this package's weights of a whole model, or an encoder's own
    state); the output norms no released file holds, and a new head, are kept at init."""
    own = model.state_dict()
    if isinstance(model, SkySenseSwinV2):
        inner = {k[len("encoder."):]: v for k, v in own.items() if k.startswith("encoder.")}
        out = {f"encoder.{k}": v for k, v in encoder_state(state_dict, inner, "hr").items()}
    else:
        out = encoder_state(state_dict, own, getattr(model, "modality", "s2"))
    for key, value in own.items():
        if key not in out and (key.startswith("encoder.norm") or key.startswith("head.")):
            out[key] = value   # output norms of earlier stages (at init, as the official configs), the new head
    return out


def _cfg(mean: Sequence[float], std: Sequence[float], chans: int, size: int, first_conv: str | None, **kw) -> dict:
    """``first_conv``: what timm may adapt to another in_chans (the HR patch embedding; the
    Sentinel encoders' bands are fixed, so None: timm must not touch their first layer)."""
    return {"num_classes": 0, "input_size": (chans, size, size), "fixed_input_size": False, "mean": tuple(mean),
            "std": tuple(std), "interpolation": "bicubic", "crop_pct": 1.0, "first_conv": first_conv,
            "classifier": "head", "license": "other",
            "paper_ids": "arXiv:2312.10115", "origin_url": "https://github.com/Jack-bo1220/SkySense",
            "notes": ("no hosted weights: pretrained=True with pretrained_cfg_overlay=dict(file=...)",), **kw}


def _s2_cfg() -> dict:
    # Sentinel-2 L2A digital numbers, not 0-1 images: timm's transforms do not apply; the
    # statistics are recorded for a pipeline that normalises itself
    return _cfg(DEFAULT.s2_mean, DEFAULT.s2_std, len(S2_BANDS), 64, None,
                description="Sentinel-2 L2A (bands " + ", ".join(S2_BANDS) + "), digital numbers")


def _s1_cfg() -> dict:
    return _cfg(DEFAULT.s1_mean, DEFAULT.s1_std, len(S1_BANDS), 64, None,
                description="Sentinel-1 (VV, VH) backscatter in dB")


default_cfgs = generate_default_cfgs({
    **{f"skysense_swinv2_{size}": _cfg(_HR_MEAN, _HR_STD, 3, 256, "encoder.patch_embed.projection",
                                       description=f"SkySense HR encoder ({name}), RGB on 0-1")
       for size, name in _SWIN.items()},
    **{f"skysense_vit_{size}_s2": _s2_cfg() for size in _VIT},
    **{f"skysense_vit_{size}_s1": _s1_cfg() for size in _VIT},
})

def _swin(size: str, pretrained: bool, **kwargs) -> SkySenseSwinV2:
    features = {"feature_cls": "getter", "out_indices": kwargs.pop("out_indices", (0, 1, 2, 3))}
    return build_model_with_cfg(SkySenseSwinV2, f"skysense_swinv2_{size}", pretrained, config=_SWIN[size],
                                pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=features, **kwargs)


def _vit(size: str, modality: str, pretrained: bool, **kwargs) -> SkySenseViT:
    depth = get_config(_VIT[size]).vit_depth
    features = {"feature_cls": "getter", "out_indices": kwargs.pop("out_indices", tuple(range(depth)))}
    return build_model_with_cfg(SkySenseViT, f"skysense_vit_{size}_{modality}", pretrained, config=_VIT[size],
                                modality=modality, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=features,
                                **kwargs)


@register_model
def skysense_swinv2_huge(pretrained: bool = False, **kwargs) -> SkySenseSwinV2:
    """SwinV2-H, the HR encoder of SkySense 2B (widths 352 / 704 / 1408 / 2816)."""
    return _swin("huge", pretrained, **kwargs)


@register_model
def skysense_swinv2_base(pretrained: bool = False, **kwargs) -> SkySenseSwinV2:
    """SwinV2-B sized, the HR encoder of skysense-base."""
    return _swin("base", pretrained, **kwargs)


@register_model
def skysense_swinv2_tiny(pretrained: bool = False, **kwargs) -> SkySenseSwinV2:
    """The test-sized HR encoder of skysense-tiny."""
    return _swin("tiny", pretrained, **kwargs)


@register_model
def skysense_vit_large_s2(pretrained: bool = False, **kwargs) -> SkySenseViT:
    """ViT-L, the Sentinel-2 encoder of SkySense 2B."""
    return _vit("large", "s2", pretrained, **kwargs)


@register_model
def skysense_vit_large_s1(pretrained: bool = False, **kwargs) -> SkySenseViT:
    """ViT-L, the Sentinel-1 encoder of SkySense 2B."""
    return _vit("large", "s1", pretrained, **kwargs)


@register_model
def skysense_vit_base_s2(pretrained: bool = False, **kwargs) -> SkySenseViT:
    return _vit("base", "s2", pretrained, **kwargs)


@register_model
def skysense_vit_base_s1(pretrained: bool = False, **kwargs) -> SkySenseViT:
    return _vit("base", "s1", pretrained, **kwargs)


@register_model
def skysense_vit_tiny_s2(pretrained: bool = False, **kwargs) -> SkySenseViT:
    return _vit("tiny", "s2", pretrained, **kwargs)


@register_model
def skysense_vit_tiny_s1(pretrained: bool = False, **kwargs) -> SkySenseViT:
    return _vit("tiny", "s1", pretrained, **kwargs)


MODEL_NAMES = tuple(sorted(default_cfgs))
