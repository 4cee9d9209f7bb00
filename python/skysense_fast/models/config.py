"""Named SkySense configurations and the registry: ``create(name)``, ``list_configs()``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import InputError


@dataclass(frozen=True)
class SkySenseConfig:
    """Every size of the model. The defaults are the paper's 2B model (SKYSENSE_SPEC.md)."""

    # HR branch: SwinV2 (stage-3 width = hr_embed_dim * 8 is the fusion's input width)
    hr_in_chans: int = 3                      # 3 (RGB) or 4 (RGB + NIR)
    hr_embed_dim: int = 352
    hr_depths: tuple[int, ...] = (2, 2, 18, 2)
    hr_heads: tuple[int, ...] = (8, 16, 32, 64)
    window_size: int = 8
    extra_norm_every_n_blocks: int = 6
    # HR stages returned as out["hr_stages"] for dense heads (UPerNet: (0, 1, 2, 3), strides
    # 4 / 8 / 16 / 32); the last stage always feeds the fusion. () returns none.
    hr_stages: tuple[int, ...] = ()
    # S2 / S1 branches: ViT with patch 4 and the UPHead (x4) to the HR stage-3 grid
    s2_in_chans: int = 10                     # B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12
    s1_in_chans: int = 2                      # VV, VH
    vit_dim: int = 1024
    vit_depth: int = 24
    vit_heads: int = 16
    vit_img_size: int = 64                    # position grid 16 x 16 (+ class token)
    # fusion
    fusion_dim: int = 1024
    fusion_layers: int = 24
    fusion_heads: int = 16
    date_embedding: tuple[str, ...] = ("s2",)  # official SkySense++ code: S2 only; the paper: all
    # geo-context (the paper leaves the bank's width open: the fusion width is what it attends with)
    geo_regions: int = 4096
    geo_prototypes: int = 100
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        """Sizes that cannot build a model are refused by name (a config read from a file too)."""
        sizes = {"hr_embed_dim": self.hr_embed_dim, "window_size": self.window_size, "vit_dim": self.vit_dim,
                 "vit_depth": self.vit_depth, "vit_heads": self.vit_heads, "vit_img_size": self.vit_img_size,
                 "fusion_dim": self.fusion_dim, "fusion_layers": self.fusion_layers,
                 "fusion_heads": self.fusion_heads, "geo_regions": self.geo_regions,
                 "geo_prototypes": self.geo_prototypes, "s2_in_chans": self.s2_in_chans,
                 "s1_in_chans": self.s1_in_chans, "extra_norm_every_n_blocks": self.extra_norm_every_n_blocks}
        for name, v in sizes.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"model config: {name} must be a positive integer, got {v!r}")
        if self.hr_in_chans not in (3, 4):
            raise InputError(f"model config: hr_in_chans must be 3 (RGB) or 4 (RGB + NIR), got {self.hr_in_chans!r}")
        if not self.hr_depths or len(self.hr_depths) != len(self.hr_heads) or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (*self.hr_depths,
                                                                                          *self.hr_heads)):
            raise InputError(f"model config: hr_depths and hr_heads must be positive integers, one per stage; got "
                             f"{self.hr_depths}, {self.hr_heads}")
        dims = [self.hr_embed_dim * 2 ** i for i in range(len(self.hr_depths))]
        bad = [(d, h) for d, h in zip(dims, self.hr_heads, strict=True) if d % h]
        if bad or self.vit_dim % self.vit_heads or self.fusion_dim % self.fusion_heads:
            raise InputError("model config: every width must be a multiple of its head count (HR stages "
                             f"{list(zip(dims, self.hr_heads, strict=True))}, vit {self.vit_dim}/{self.vit_heads}, "
                             f"fusion {self.fusion_dim}/{self.fusion_heads})")
        if not set(self.date_embedding) <= {"hr", "s2", "s1"} or isinstance(self.date_embedding, str):
            raise InputError(f"model config: date_embedding names modalities among hr, s2, s1, got "
                             f"{self.date_embedding!r}")

    @property
    def hr_out_dim(self) -> int:
        return self.hr_embed_dim * 2 ** (len(self.hr_depths) - 1)


_CONFIGS: dict[str, SkySenseConfig] = {
    "skysense-2b": SkySenseConfig(),
    # SwinV2-B / ViT-B sized; geo bank 1,024 regions x 50
    "skysense-base": SkySenseConfig(hr_embed_dim=128, hr_depths=(2, 2, 18, 2), hr_heads=(4, 8, 16, 32), vit_dim=768,
                                    vit_depth=12, vit_heads=12, fusion_dim=768, fusion_layers=12, fusion_heads=12,
                                    geo_regions=1024, geo_prototypes=50),
    # for tests: seconds on a CPU
    "skysense-tiny": SkySenseConfig(hr_embed_dim=16, hr_depths=(2, 2, 2, 2), hr_heads=(2, 2, 4, 4), window_size=4,
                                    extra_norm_every_n_blocks=2, vit_dim=32, vit_depth=2, vit_heads=4, vit_img_size=16,
                                    fusion_dim=64, fusion_layers=2, fusion_heads=4, geo_regions=16, geo_prototypes=8),
}


def list_configs() -> list[str]:
    return sorted(_CONFIGS)


def get_config(name: str, **overrides) -> SkySenseConfig:
    if name not in _CONFIGS:
        raise InputError(f"unknown SkySense config {name!r}; available: {', '.join(list_configs())}")
    return replace(_CONFIGS[name], **overrides)


def register_config(name: str, config: SkySenseConfig) -> None:
    _CONFIGS[name] = config
