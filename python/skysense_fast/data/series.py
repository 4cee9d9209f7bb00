"""Sentinel-2 / Sentinel-1 time series from GeoTIFFs: dates, band checks, resampling onto the
fusion grid, validity, normalisation (SKYSENSE_SPEC.md §4, §8)."""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from dataclasses import dataclass

import numpy as np

S2_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
S1_BANDS = ("VV", "VH")
# L2A digital numbers (no division) and dB, from the official SkySense++ configs
S2_MEAN = np.array([884.30, 1144.16, 1297.47, 1624.91, 2194.64, 2422.21, 2517.76, 2581.65, 2368.51, 1805.07], np.float32)
S2_STD = np.array([1155.15, 1183.63, 1368.11, 1370.27, 1355.55, 1416.51, 1474.79, 1439.31, 1455.52, 1343.48], np.float32)
S1_MEAN = np.array([-12.548, -20.192], np.float32)
S1_STD = np.array([5.257, 5.912], np.float32)

_DATE = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:T\d{6})?(?!\d)")


_DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "TIFFTAG_DATETIME")


def _first_date(text: str) -> dt.date | None:
    for m in _DATE.finditer(text):
        try:
            return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            continue
    return None


def parse_date(name: str) -> dt.date:
    """The acquisition date of a file: from its name (YYYYMMDD, YYYYMMDDTHHMMSS or YYYY-MM-DD),
    else from a GeoTIFF tag (ACQUISITION_DATE, DATE_ACQUIRED, SENSING_TIME, TIFFTAG_DATETIME)."""
    found = _first_date(os.path.basename(name))
    if found is None and os.path.exists(name):
        import rasterio

        with rasterio.open(name) as ds:
            tags = ds.tags()
        for key in _DATE_TAGS:
            if key in tags:
                found = _first_date(tags[key].replace(":", "-", 2) if key == "TIFFTAG_DATETIME" else tags[key])
                if found is not None:
                    break
    if found is None:
        raise ValueError(f"no acquisition date in the file name {name!r} (YYYYMMDD, YYYYMMDDTHHMMSS or YYYY-MM-DD) "
                         f"nor in its tags ({', '.join(_DATE_TAGS)}); pass the dates explicitly")
    return found


@dataclass(frozen=True)
class Acquisition:
    path: str
    date: dt.date

    @property
    def doy(self) -> int:
        return self.date.timetuple().tm_yday


def find_series(source: str | os.PathLike | list, dates: list[dt.date] | None = None) -> list[Acquisition]:
    """Acquisitions of a folder of GeoTIFFs (or a list of files), sorted by date."""
    if isinstance(source, (list, tuple)):
        files = [os.fspath(f) for f in source]
    else:
        src = os.fspath(source)
        if not os.path.isdir(src):
            raise FileNotFoundError(f"series folder not found: {src}")
        files = sorted(glob.glob(os.path.join(src, "*.tif")) + glob.glob(os.path.join(src, "*.tiff")))
        if not files:
            raise ValueError(f"no GeoTIFF (*.tif) in {src}")
    if dates is not None and len(dates) != len(files):
        raise ValueError(f"{len(dates)} dates given for {len(files)} files")
    acq = [Acquisition(f, d if dates is not None else parse_date(f)) for f, d in zip(files, dates or [None] * len(files))]
    return sorted(acq, key=lambda a: a.date)


def read_on_grid(acq: list[Acquisition], bands: int, crs, transform, shape: tuple[int, int], kind: str,
                 s1_scale: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Every acquisition resampled (bilinear) onto a target grid, normalised.

    Returns (T, bands, h, w) float32 (invalid pixels 0) and validity (T,) bool: an acquisition
    counts as valid on this grid when at least half its pixels hold data (nodata, and the area
    outside its footprint, do not).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    out = np.zeros((len(acq), bands, *shape), np.float32)
    valid = np.zeros(len(acq), bool)
    for i, a in enumerate(acq):
        with rasterio.open(a.path) as ds:
            if ds.count != bands:
                names = S2_BANDS if kind == "s2" else S1_BANDS
                raise ValueError(f"{a.path} has {ds.count} band(s); {kind.upper()} needs {bands} ({', '.join(names)})")
            with WarpedVRT(ds, crs=crs, transform=transform, width=shape[1], height=shape[0],
                           resampling=Resampling.bilinear, src_nodata=ds.nodata, nodata=np.nan, dtype="float32") as v:
                x = v.read()
        ok = np.isfinite(x).all(0)
        x = np.nan_to_num(x)
        if kind == "s1":
            linear = s1_scale == "linear" or (s1_scale == "auto" and x[:, ok].size and x[:, ok].min() >= 0)
            if linear:  # backscatter power -> dB, as the statistics expect
                x = 10 * np.log10(np.maximum(x, 1e-6))
            x = (x - S1_MEAN[:, None, None]) / S1_STD[:, None, None]
        else:
            x = (x - S2_MEAN[:, None, None]) / S2_STD[:, None, None]
        out[i] = np.where(ok, x, 0.0)
        valid[i] = ok.mean() >= 0.5
    return out, valid
