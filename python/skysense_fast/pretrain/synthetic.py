"""A synthetic multimodal dataset with the interface of the scene readers.

Each sample is one place seen by the three sensors: a land-cover map (Voronoi cells of a
few classes) drawn at HR resolution (32 pixels per Sentinel pixel, with texture), and the
same map seen by Sentinel-2 (per-class spectra with a seasonal cycle that depends on the
acquisition's day of year) and Sentinel-1 (per-class backscatter in dB, speckle). Values
are already normalised (zero mean, unit scale per band), like ``data.normalise_hr`` and the
series readers' outputs. Sample ``i`` is a pure function of (seed, i): a run that resumes
at a data position sees exactly the samples it would have seen, on any number of ranks.

A sample: ``hr`` (3, 32 g, 32 g), ``s2`` (T1, 10, g, g), ``s1`` (T2, 2, g, g), ``doy_s2`` /
``doy_s1`` (T,) int64 in 1..365 (sorted), ``valid_s2`` / ``valid_s1`` (T,) bool (a cloudy
S2 acquisition is invalid), ``latlon`` (2,) degrees.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HR_SCALE = 32


class SyntheticMultimodal(torch.utils.data.Dataset):
    def __init__(self, samples: int = 4096, grid: int = 6, s2_frames: int = 4, s1_frames: int = 4, classes: int = 6,
                 seed: int = 0, cloud_prob: float = 0.1, modalities: tuple[str, ...] = ("hr", "s2", "s1")):
        self.samples, self.grid, self.t2, self.t1, self.classes = samples, grid, s2_frames, s1_frames, classes
        self.modalities = tuple(modalities)   # the keys of the others are left out of each sample
        self.seed, self.cloud_prob = seed, cloud_prob
        g = torch.Generator().manual_seed(seed)
        # per-class signatures, shared by the whole dataset: what makes the modalities agree
        self.hr_colour = torch.randn(classes, 3, generator=g)
        self.s2_base = torch.randn(classes, 10, generator=g)
        self.s2_amp = torch.rand(classes, 10, generator=g)
        self.s2_phase = torch.rand(classes, 1, generator=g) * 2 * math.pi
        self.s1_base = torch.randn(classes, 2, generator=g)

    def __len__(self) -> int:
        return self.samples

    def _landcover(self, g: torch.Generator) -> Tensor:
        """(32 grid, 32 grid) class ids: nearest of a few random seeds (Voronoi)."""
        n = self.grid * HR_SCALE
        seeds = torch.rand(max(2, self.classes), 2, generator=g) * n
        labels = torch.randint(0, self.classes, (seeds.shape[0],), generator=g)
        yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
        return labels[d.argmin(-1)]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < self.samples:
            raise IndexError(f"sample {index} outside the dataset of {self.samples}")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 1)
        cover = self._landcover(g)                                   # (32g, 32g)
        hr = self.hr_colour[cover].permute(2, 0, 1) + 0.3 * torch.randn(3, *cover.shape, generator=g)
        # Sentinel pixels: the class fractions of each 32 x 32 block
        onehot = torch.nn.functional.one_hot(cover, self.classes).permute(2, 0, 1).float()
        frac = torch.nn.functional.avg_pool2d(onehot[None], HR_SCALE)[0]  # (classes, g, g)
        doy_s2 = torch.randint(1, 366, (self.t2,), generator=g).sort().values
        doy_s1 = torch.randint(1, 366, (self.t1,), generator=g).sort().values
        season = torch.sin(2 * math.pi * doy_s2[:, None, None].float() / 365 + self.s2_phase[None])  # (T, classes, 1)
        spectra = self.s2_base[None] + self.s2_amp[None] * season                                  # (T, classes, 10)
        noise = torch.randn(self.t2, 10, self.grid, self.grid, generator=g)
        s2 = torch.einsum("tkc,khw->tchw", spectra, frac) + 0.1 * noise
        valid_s2 = torch.rand(self.t2, generator=g) >= self.cloud_prob
        s2[~valid_s2] = 3.0 + torch.rand(int((~valid_s2).sum()), 10, self.grid, self.grid, generator=g)  # cloud: bright
        s1 = torch.einsum("kc,khw->chw", self.s1_base, frac)[None] + 0.3 * torch.randn(self.t1, 2, self.grid, self.grid,
                                                                                     generator=g)
        lat = torch.rand((), generator=g) * 130 - 60
        lon = torch.rand((), generator=g) * 360 - 180
        out = {"hr": hr, "s2": s2, "s1": s1, "doy_s2": doy_s2, "doy_s1": doy_s1, "valid_s2": valid_s2,
               "valid_s1": torch.ones(self.t1, dtype=torch.bool), "latlon": torch.stack([lat, lon])}
        return only(out, self.modalities)


def only(sample: dict[str, Tensor], modalities) -> dict[str, Tensor]:
    """A sample's entries of these modalities (each series with its dates and validity) and latlon."""
    keep = {"latlon", *(k for m in modalities for k in ((m,) if m == "hr" else (m, f"doy_{m}", f"valid_{m}")))}
    return {k: v for k, v in sample.items() if k in keep}
