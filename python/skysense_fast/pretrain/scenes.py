"""Pretraining samples cut from real imagery: an HR image with (optionally) Sentinel-2 and
Sentinel-1 series of the same area, read by the scene readers (``skysense_fast.data``). An HR
image without a CRS (a PNG, say) takes its location from ``latlon`` and no series.

Samples are windows of ``grid`` x ``grid`` fusion cells (32 ``grid`` HR pixels) on a regular
lattice over the HR scene (``stride`` cells apart, default ``grid``: no overlap). For each,
the HR window is read and normalised (nodata -> 0), each series is resampled onto the
window's fusion grid (any CRS / resolution; nodata, clouds and the area outside a footprint
invalid), ``frames`` acquisitions are taken evenly over the series (fewer: the rest are
invalid padding), and the geolocation is the window's centre. Same keys and shapes as
:class:`~skysense_fast.pretrain.synthetic.SyntheticMultimodal`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.geotiff import hr_scaler, nodata_mask, normalise_hr, open_raster, scene_latlon
from ..data.series import check_coverage, find_series, read_on_grid
from ..errors import InputError
from .synthetic import HR_SCALE


def _pick(acq: list, frames: int) -> list:
    if len(acq) <= frames:
        return acq
    return [acq[int(i)] for i in np.linspace(0, len(acq) - 1, frames).round()]


class SceneDataset(torch.utils.data.Dataset):
    def __init__(self, hr: str, s2: str | None = None, s1: str | None = None, grid: int = 6, s2_frames: int = 4,
                 s1_frames: int = 4, stride: int | None = None, hr_scale: str | None = None,
                 latlon: tuple[float, float] | None = None):
        self.hr, self.grid, self.frames = hr, grid, {"s2": s2_frames, "s1": s1_frames}
        with open_raster(hr, bands=3, need_crs=False) as ds:
            self.crs, self.transform, H, W = ds.crs, ds.transform, ds.height, ds.width
            self.scale = hr_scaler(ds, hr_scale)  # a raster that is not 8-bit needs data.hr_scale
            if ds.crs is None:
                if latlon is None:
                    raise InputError(f"{hr} has no CRS: give its location as data.latlon (or latlon: [lat, lon] "
                                     "in its manifest entry)")
                if s2 is not None or s1 is not None:
                    raise InputError(f"{hr} has no CRS: Sentinel series cannot be put onto it (pretrain it on hr "
                                     "alone, or use a georeferenced image)")
            elif latlon is not None:
                raise InputError(f"{hr} has a CRS, which gives each window's location: data.latlon (or a manifest "
                                 "latlon) is for images without one")
            self.latlon = latlon if ds.crs is None else None
            # PNG / JPEG have no random access (each window would decode the whole file): such an
            # image is read once, on first use, and windows are cut from memory
            self.whole = ds.driver in ("PNG", "JPEG")
            self._pixels: np.ndarray | None = None
            self._nodata = ds.nodata
            sources = {"s2": (s2, 10, s2_frames), "s1": (s1, 2, s1_frames)}
            self.series = {k: _pick(find_series(src, band_count=n), frames)
                           for k, (src, n, frames) in sources.items() if src is not None}
            for kind, acq in self.series.items():
                check_coverage(acq, ds.crs, ds.bounds, kind)
        size, step = grid * HR_SCALE, (stride or grid) * HR_SCALE
        self.windows = [(r, c) for r in range(0, H - size + 1, step) for c in range(0, W - size + 1, step)]
        if not self.windows:
            raise InputError(f"{hr} ({W} x {H} px) is smaller than one sample of {size} x {size} px "
                             f"(data.grid = {grid} cells of {HR_SCALE} px)")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        from rasterio.transform import Affine
        from rasterio.windows import Window

        r, c = self.windows[index]
        size = self.grid * HR_SCALE
        if self.whole:
            if self._pixels is None:
                with open_raster(self.hr, bands=3, need_crs=False) as ds:
                    self._pixels = ds.read([1, 2, 3])
            a = self._pixels[:, r:r + size, c:c + size]
        else:
            with open_raster(self.hr, bands=3, need_crs=False) as ds:
                a = ds.read([1, 2, 3], window=Window(c, r, size, size))
        x = normalise_hr(a if self.scale is None else self.scale(a))
        hole = nodata_mask(a, self._nodata)
        if hole is not None:
            x = np.where(hole[None], 0.0, x).astype(np.float32)
        if self.latlon is not None:
            lat, lon = self.latlon
        else:
            with open_raster(self.hr, bands=3) as ds:
                lat, lon = scene_latlon(ds, at=(c + size / 2, r + size / 2))
        cells = self.transform @ Affine.translation(c, r) @ Affine.scale(HR_SCALE, HR_SCALE)
        out = {"hr": torch.from_numpy(x), "latlon": torch.tensor([lat, lon], dtype=torch.float32)}
        for kind, acq in self.series.items():
            bands, T = (10 if kind == "s2" else 2), self.frames[kind]
            xs, ok = read_on_grid(acq, bands, self.crs, cells, (self.grid, self.grid), kind)
            series = torch.zeros(T, bands, self.grid, self.grid)
            series[:len(acq)] = torch.from_numpy(xs)
            valid = torch.zeros(T, dtype=torch.bool)
            valid[:len(acq)] = torch.from_numpy(ok)
            doy = torch.ones(T, dtype=torch.long)           # padding frames: a legal day, never valid
            doy[:len(acq)] = torch.tensor([a.doy for a in acq])
            out.update({kind: series, f"doy_{kind}": doy, f"valid_{kind}": valid})
        return out
