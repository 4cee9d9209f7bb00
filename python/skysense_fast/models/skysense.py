"""The SkySense assembly: factorized multimodal spatiotemporal encoder + geo-context.

Spatial rule (SKYSENSE_SPEC.md §7): the HR image has 32 pixels per Sentinel pixel, so the
HR stage-3 map (H/32) and the Sentinel maps after the ViT (/4) and the UPHead (x4) share the
fusion grid: HR (B, 3, 32 h, 32 w) <-> S2 (B, T1, 10, h, w) <-> S1 (B, T2, 2, h, w).
"""

from __future__ import annotations

from typing import Protocol, cast

from torch import Tensor, nn

from ..errors import InputError
from ..nn.temporal_fusion import MultimodalTemporalFusion, TemporalPositionEncoding
from .config import SkySenseConfig, get_config
from .geo_context import GeoContext
from .swinv2 import SwinV2Encoder
from .vit import UPHead, ViTEncoder


class _Checkpointable(Protocol):
    """A block stack with the class-level ``grad_checkpointing`` flag (Swin, ViT, fusion)."""

    grad_checkpointing: bool


class SkySense(nn.Module):
    """Encoders per modality, per-pixel temporal fusion, geo-context.

    Submodules (and the official checkpoint files they load from): ``hr`` (SwinV2, the HR
    backbone file), ``s2`` / ``s1`` (ViT backbones), ``head_s2`` / ``head_s1`` (UPHeads),
    ``fusion``, ``ctpe`` (the date table, shipped in the S2 file), ``geo`` (the prototype
    bank; not in any released file).
    """

    geo: GeoContext | None   # None in a pretraining teacher (make_teacher drops the bank)
    source_files: tuple[str, ...] = ()   # the files it was loaded from (from_pretrained): never an output

    def __init__(self, config: SkySenseConfig | str = "skysense-2b"):
        super().__init__()
        cfg = get_config(config) if isinstance(config, str) else config
        self.config = cfg
        out, last = cfg.hr_out_dim, len(cfg.hr_depths) - 1
        bad = [i for i in cfg.hr_stages if not (isinstance(i, int) and 0 <= i <= last)]
        if bad:
            raise InputError(f"SkySense: hr_stages must be stage indices in 0..{last}, got {list(cfg.hr_stages)}")
        self.hr = SwinV2Encoder(cfg.hr_in_chans, cfg.hr_embed_dim, cfg.hr_depths, cfg.hr_heads, cfg.window_size,
                                extra_norm_every_n_blocks=cfg.extra_norm_every_n_blocks,
                                out_indices=sorted(set(cfg.hr_stages) | {last}))
        vit = dict(embed_dim=cfg.vit_dim, depth=cfg.vit_depth, num_heads=cfg.vit_heads, img_size=cfg.vit_img_size)
        self.s2 = ViTEncoder(cfg.s2_in_chans, **vit)
        self.s1 = ViTEncoder(cfg.s1_in_chans, **vit)
        self.head_s2 = UPHead(cfg.vit_dim, out)
        self.head_s1 = UPHead(cfg.vit_dim, out)
        self.ctpe = TemporalPositionEncoding(out)
        self.fusion = MultimodalTemporalFusion(out, cfg.fusion_dim, cfg.fusion_layers, cfg.fusion_heads)
        self.geo = GeoContext(cfg.fusion_dim, cfg.geo_regions, cfg.geo_prototypes)

    def hr_feature_info(self) -> list[dict]:
        """Channels, stride and module of each map in out["hr_stages"] (timm's feature_info)."""
        return [{"num_chs": self.hr.dims[i], "reduction": 2 ** (i + 2), "module": f"hr.norm{i}"}
                for i in self.config.hr_stages]

    def blocks(self) -> list[nn.Module]:
        """Every transformer block (Swin blocks, ViT layers, fusion layers): the units FSDP2
        shards and activation checkpointing recomputes."""
        return [*self.hr.blocks(), *self.s2.blocks(), *self.s1.blocks(), *self.fusion.layers]

    def layer_groups(self) -> dict[str, tuple[int, int]]:
        """{parameter name: (layer id, depth)} for the encoders' parameters (layer-wise lr
        decay within each encoder, as BEiT / DINOv2); the rest (UPHeads, date table, fusion,
        geo) are after the encoders and absent."""
        out: dict[str, tuple[int, int]] = {}
        for enc in ("hr", "s2", "s1"):
            ids, depth = getattr(self, enc).layer_ids()
            out |= {f"{enc}.{k}": (i, depth) for k, i in ids.items()}
        return out

    def unreached(self, inputs) -> list[str]:
        """The submodules that inputs of only these modalities (``hr``, ``s2``, ``s1``) never
        reach: the absent encoders and their UPHeads, the date table without a dated series.
        Frozen in runs on such data, they get no gradients and no optimiser state."""
        out = [m for kind in ("hr", "s2", "s1") if kind not in inputs
               for m in ((kind,) if kind == "hr" else (kind, f"head_{kind}"))]
        if not set(inputs) & set(self.config.date_embedding):
            out.append("ctpe")
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> SkySense:
        """Recompute each transformer block in the backward instead of storing its activations
        (training only): Swin blocks, ViT layers, fusion layers."""
        for m in self.modules():
            if hasattr(type(m), "grad_checkpointing"):
                cast(_Checkpointable, m).grad_checkpointing = enable
        return self

    def _series(self, x: Tensor, name: str, encoder: ViTEncoder, head: UPHead) -> Tensor:
        """(B, T, C, h, w) -> (B, T, out, h, w): acquisitions folded into the batch."""
        if x.dim() != 5 or x.shape[2] != encoder.in_chans:
            raise InputError(f"SkySense: {name} must have shape (B, T, {encoder.in_chans}, h, w) "
                             f"({encoder.in_chans} bands), got {tuple(x.shape)}")
        B, T, _, h, w = x.shape
        # the ViT pads to whole patches; its padding comes back out of the UPHead: crop it
        y = head(encoder(x.flatten(0, 1)))[..., :h, :w]
        return y.reshape(B, T, *y.shape[1:])

    def forward(self, hr: Tensor | None = None, s2: Tensor | None = None, s1: Tensor | None = None, *,
                doy_s2: Tensor | None = None, doy_s1: Tensor | None = None, valid_s2: Tensor | None = None,
                valid_s1: Tensor | None = None, latlon: Tensor | None = None) -> dict[str, Tensor | None]:
        """Any subset of modalities.

        Args:
            hr: (B, hr_in_chans, 32 h, 32 w) normalised HR image.
            s2: (B, T1, 10, h, w) Sentinel-2 series; doy_s2 (B, T1) days of year (required).
            s1: (B, T2, 2, h, w) Sentinel-1 series; doy_s1 (B, T2) (required).
            valid_s2, valid_s1: (B, T) bool, False for padding acquisitions.
            latlon: (B, 2) degrees; with it the geo-context map is returned.

        Returns:
            {"hr", "s2", "s1": per-modality maps on the fusion grid (None if absent),
             "fused": (B, fusion_dim, h, w), "geo": (B, 2 fusion_dim, h, w) or None}; with
            ``config.hr_stages`` also "hr_stages": the HR maps of those stages, (B, C_i,
            H / 2^(i+2), W / 2^(i+2)) each (None without hr; see :meth:`hr_feature_info`).
        """
        cfg = self.config
        if hr is None and s2 is None and s1 is None:
            raise InputError("SkySense: give at least one of hr, s2, s1")
        maps: dict[str, Tensor | None] = {"hr": None, "s2": None, "s1": None}
        stages: list[Tensor] | None = None
        if hr is not None:
            if hr.dim() != 4 or hr.shape[1] != cfg.hr_in_chans:
                raise InputError(f"SkySense: hr must have shape (B, {cfg.hr_in_chans}, H, W) ({cfg.hr_in_chans} "
                                 "bands), "
                                 f"got {tuple(hr.shape)}")
            feats = self.hr(hr)
            maps["hr"] = feats[-1]
            stages = [feats[self.hr.out_indices.index(i)] for i in cfg.hr_stages]
        for name, x, doy, enc, head in (("s2", s2, doy_s2, self.s2, self.head_s2),
                                        ("s1", s1, doy_s1, self.s1, self.head_s1)):
            if x is None:
                continue
            if doy is None:
                raise InputError(f"SkySense: {name} is a time series: its acquisition days of year (doy_{name}) "
                                 "are required")
            maps[name] = self._series(x, name, enc, head)
        grids = {k: (int(v.shape[-2]), int(v.shape[-1])) for k, v in maps.items() if v is not None}
        if len(set(grids.values())) > 1:
            raise InputError(f"SkySense: the modalities do not share the fusion grid: {grids} "
                             "(HR needs 32 pixels per Sentinel pixel)")
        dates = {f"doy_{n}": d for n, d in (("s2", doy_s2), ("s1", doy_s1))
                 if n in cfg.date_embedding and maps[n] is not None}
        fused = self.fusion.forward_maps(maps["hr"], maps["s2"], maps["s1"],
                                         date_table=self.ctpe.ctpe if dates else None,
                                         valid_s2=valid_s2 if s2 is not None else None,
                                         valid_s1=valid_s1 if s1 is not None else None, **dates)
        geo = None
        if latlon is not None:
            if self.geo is None:
                raise InputError("SkySense: this model has no geo-context bank (a pretraining teacher); "
                                 "give no latlon")
            geo = self.geo(fused, latlon)
        out = {**maps, "fused": fused, "geo": geo}
        if cfg.hr_stages:
            out["hr_stages"] = stages
        return out


def create(name: str = "skysense-2b", **overrides) -> SkySense:
    """A SkySense model of a named configuration (``list_configs()``), fields overridable."""
    return SkySense(get_config(name, **overrides))


__all__ = ["SkySense", "create"]
