"""Sentinel-2 / Sentinel-1 time series from GeoTIFFs: dates, band checks, resampling onto the
fusion grid, validity, normalisation (SKYSENSE_SPEC.md §4, §8)."""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..errors import InputError
from .acquisition import OFFICIAL_S2_ORDER, S1_BANDS, S2_BANDS, Acquisition
from .normalisation import DEFAULT
from .stac import SCL_INVALID, is_stac, stac_series

# L2A digital numbers (no division) and dB, from the official SkySense++ configs
S2_MEAN, S2_STD = np.array(DEFAULT.s2_mean, np.float32), np.array(DEFAULT.s2_std, np.float32)
S1_MEAN, S1_STD = np.array(DEFAULT.s1_mean, np.float32), np.array(DEFAULT.s1_std, np.float32)

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
        raise InputError(f"no acquisition date in the file name {name!r} (YYYYMMDD, YYYYMMDDTHHMMSS or YYYY-MM-DD) "
                         f"nor in its tags ({', '.join(_DATE_TAGS)}); pass the dates explicitly")
    return found


def _as_date(d) -> dt.date:
    if isinstance(d, dt.date):
        return d
    found = _first_date(str(d))
    if found is None:
        raise InputError(f"not a date: {d!r} (expected YYYY-MM-DD or YYYYMMDD)")
    return found


def _series_file(path: str, dates: Sequence | None, band_count: int) -> list[Acquisition]:
    """A multi-band file holding a whole series: T groups of B bands (B + 1 with a cloud mask),
    acquisition by acquisition. Dates: given, or one per group in the band descriptions."""
    import rasterio

    with rasterio.open(path) as ds:
        count, descriptions = ds.count, ds.descriptions
    if dates is None:
        per_band = [_first_date(d) if d else None for d in descriptions]
        if any(d is None for d in per_band):
            raise InputError(f"{path} holds a series in one file: give its dates (--s2-dates / --s1-dates, or "
                             "dates=[...]) or put the date of each band in its description")
        dates = list(dict.fromkeys(per_band))            # distinct, in band order
    dates = [_as_date(d) for d in dates]
    T = len(dates)
    if T == 0 or count % T or count // T not in (band_count, band_count + 1):
        raise InputError(f"{path} has {count} bands for {T} acquisitions: each needs {band_count} bands "
                         f"(or {band_count + 1} with a cloud mask last)")
    per = count // T
    return [Acquisition(path, d, tuple(range(i * per + 1, i * per + band_count + 1)),
                        i * per + per if per > band_count else None) for i, d in enumerate(dates)]


def find_series(source: str | os.PathLike | list, dates: Sequence | None = None, band_count: int | None = None
                ) -> list[Acquisition]:
    """Acquisitions of a series, sorted by date.

    ``source``: a folder of GeoTIFFs (one per acquisition), a list of files, one multi-band
    GeoTIFF holding the whole series (``band_count`` bands per acquisition, 10 for S2, 2 for
    S1, optionally + 1 cloud-mask band), or STAC: an ItemCollection file, an item file or a
    list of them (:func:`~skysense_fast.data.stac.stac_series`). ``dates``: explicit dates
    (``datetime.date`` or YYYY-MM-DD strings), one per file / acquisition; by default from
    the file names, tags or band descriptions (STAC: from the items, never given).
    """
    if is_stac(source):
        if dates is not None:
            raise InputError("STAC items carry their dates: explicit dates are not taken with them")
        if band_count not in BAND_COUNT.values():
            raise InputError("find_series: STAC items need band_count 10 (S2) or 2 (S1)")
        return stac_series(source, "s2" if band_count == BAND_COUNT["s2"] else "s1")
    if isinstance(source, (list, tuple)):
        files = [os.fspath(f) for f in source]
    else:
        src = os.fspath(source)
        if os.path.isfile(src):
            if band_count is None:
                raise InputError("find_series: a single-file series needs band_count (10 for S2, 2 for S1)")
            return sorted(_series_file(src, dates, band_count), key=lambda a: a.date)
        if not os.path.isdir(src):
            raise FileNotFoundError(f"series folder or file not found: {src}")
        files = sorted(glob.glob(os.path.join(src, "*.tif")) + glob.glob(os.path.join(src, "*.tiff")))
        if not files:
            raise InputError(f"no GeoTIFF (*.tif) in {src}")
    if dates is not None and len(dates) != len(files):
        raise InputError(f"{len(dates)} dates given for {len(files)} files")
    found = [_as_date(d) for d in dates] if dates is not None else [parse_date(f) for f in files]
    return sorted((Acquisition(f, d) for f, d in zip(files, found, strict=True)), key=lambda a: a.date)


BAND_COUNT = {"s2": len(S2_BANDS), "s1": len(S1_BANDS)}


def series_files(series: dict) -> dict[str, list[str]]:
    """{kind: every file its acquisitions read} for the given series (None ones left out)."""
    return {k: [f for a in acq for f in a.every_file] for k, acq in series.items() if acq}


def series_manifest(series: dict) -> dict[str, list[dict]]:
    """{kind: every acquisition as JSON (files, date, bands, mask band, band order, STAC parts)}:
    what a resumable run records, so that pieces made with other dates or bands are refused."""
    import dataclasses
    import json

    return {k: [json.loads(json.dumps(dataclasses.asdict(a), default=str)) for a in acq]
            for k, acq in series.items() if acq}


def series_input(source, dates: Sequence | None = None, kind: str = "s2", band_order: str = "model"
                 ) -> list[Acquisition] | None:
    """What ``--s2`` / ``--s1`` and the configs' ``data.s2`` / ``data.s1`` name: None, a list of
    :class:`Acquisition`, or what :func:`find_series` takes, with optional explicit dates.
    ``band_order``: "model" (as stored) or "official" (S2 files with B8 fourth, as the official
    SkySense files; band names in the descriptions decide where every band has one)."""
    if band_order not in ("model", "official"):
        raise InputError(f"s2_band_order must be 'model' or 'official', got {band_order!r}")
    if source is None:
        return None
    if isinstance(source, list) and source and isinstance(source[0], Acquisition):
        acq = source
    else:
        acq = find_series(source, dates, BAND_COUNT[kind])
    if band_order == "official" and kind == "s2":   # STAC assets name their bands: no order to apply
        acq = [a if a.parts else replace(a, band_order=OFFICIAL_S2_ORDER) for a in acq]
    return acq


_S2_NAME = re.compile(r"(?<![A-Z0-9])B0?(\d{1,2}A?)(?![0-9A-Z])")
_S1_NAME = re.compile(r"(?<![A-Z])(VV|VH)(?![A-Z])")


def _band_name(description: str | None, kind: str) -> str | None:
    """'B02', 'S2_B8A_20m', '2021-03-01 B11' -> 'B2', 'B8A', 'B11'; 'VV_dB' -> 'VV'; else None."""
    if not description:
        return None
    m = (_S2_NAME if kind == "s2" else _S1_NAME).search(description.upper())
    return None if m is None else ("B" + m.group(1) if kind == "s2" else m.group(1))


def ordered_bands(path: str, descriptions, wanted: tuple[int, ...], kind: str) -> list[int]:
    """The bands to read, in the model's order (B2..B12 or VV, VH).

    When every band of the acquisition names itself in its description, the names are
    checked against the expected set and the bands put in the expected order; a file whose
    bands say nothing is taken in the order given.
    """
    expected = S2_BANDS if kind == "s2" else S1_BANDS
    found = [_band_name(descriptions[b - 1], kind) for b in wanted]
    names = [n for n in found if n is not None]
    if len(names) < len(found):   # some band says nothing
        return list(wanted)
    if sorted(names) != sorted(expected):
        raise InputError(f"{path}: its bands are named {', '.join(names)}; {kind.upper()} needs "
                         f"{', '.join(expected)}")
    by_name = dict(zip(names, wanted, strict=True))
    return [by_name[n] for n in expected]


def check_coverage(acq: list[Acquisition], crs, bounds, kind: str) -> None:
    """Errors a user can act on before any tile runs: a series file without a CRS, or a series
    none of whose acquisitions overlaps the scene (bounds: left, bottom, right, top in ``crs``).
    Partial overlap is fine: pixels outside an acquisition's footprint are invalid."""
    import rasterio
    from rasterio.warp import transform_bounds

    left, bottom, right, top = bounds
    seen = []
    for path in dict.fromkeys(f for a in acq for f in a.files):
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise InputError(f"{path} has no CRS: {kind.upper()} files must be georeferenced to be aligned "
                                 "with the scene")
            b = transform_bounds(ds.crs, crs, *ds.bounds, densify_pts=21)
        seen.append(b)
        if b[0] < right and b[2] > left and b[1] < top and b[3] > bottom:
            return
    fmt = lambda b: "(" + ", ".join(f"{v:.1f}" for v in b) + ")"  # noqa: E731
    raise InputError(f"the {kind.upper()} series does not overlap the scene: scene bounds {fmt(bounds)}, series "
                     f"bounds {', '.join(fmt(b) for b in seen[:3])} (in the scene's CRS {crs})")


def _read_file(a: Acquisition, bands: int, grid: dict, kind: str) -> np.ndarray:
    """A GeoTIFF acquisition on the grid: (bands, h, w) float32, NaN where invalid."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    names = S2_BANDS if kind == "s2" else S1_BANDS
    with rasterio.open(a.path) as ds:
        wanted, mask_band = a.bands, a.mask_band
        if wanted is None:
            if ds.count not in (bands, bands + 1):
                raise InputError(f"{a.path} has {ds.count} band(s); {kind.upper()} needs {bands} "
                                 f"({', '.join(names)}), optionally + 1 cloud-mask band")
            wanted, mask_band = tuple(range(1, bands + 1)), (bands + 1 if ds.count == bands + 1 else None)
        elif len(wanted) != bands:
            raise InputError(f"{a.path}: {len(wanted)} bands per acquisition; {kind.upper()} needs {bands}")
        if a.band_order is not None:
            wanted = tuple(wanted[j] for j in a.band_order)
        with WarpedVRT(ds, **grid, resampling=Resampling.bilinear, src_nodata=ds.nodata, nodata=np.nan,
                       dtype="float32") as v:
            x = v.read(ordered_bands(a.path, ds.descriptions, tuple(wanted), kind))
        if mask_band is not None:  # clouds: any cloudy source pixel under a grid cell invalidates it
            with WarpedVRT(ds, **grid, resampling=Resampling.max, dtype="float32") as v:
                cloud = v.read(mask_band) != 0
            x[:, cloud] = np.nan
    return x


def _read_parts(a: Acquisition, grid: dict) -> np.ndarray:
    """A STAC acquisition on the grid: each item's band files (bilinear), its offset added, its
    SCL classes that are no ground observation masked (nearest); the day's items mosaicked,
    the first item that holds a cell taking it. (bands, h, w) float32, NaN where invalid."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    out = np.full((len(a.parts[0].bands), grid["height"], grid["width"]), np.nan, np.float32)
    for part in a.parts:
        x = np.empty_like(out)
        for b, href in enumerate(part.bands):
            with rasterio.open(href) as ds:
                if ds.count != 1:
                    raise InputError(f"{href}: a STAC band asset with {ds.count} bands (one expected)")
                nodata = ds.nodata if ds.nodata is not None else part.nodata
                with WarpedVRT(ds, **grid, resampling=Resampling.bilinear, src_nodata=nodata, nodata=np.nan,
                               dtype="float32") as v:
                    x[b] = v.read(1)
        x += np.float32(part.offset)
        if part.scl is not None:
            with rasterio.open(part.scl) as ds, WarpedVRT(ds, **grid, resampling=Resampling.nearest) as v:
                scl = v.read(1)
            x[:, np.isin(scl, SCL_INVALID)] = np.nan
        fill = np.isnan(out).any(0) & np.isfinite(x).all(0)
        out[:, fill] = x[:, fill]
    return out


def read_on_grid(acq: list[Acquisition], bands: int, crs, transform, shape: tuple[int, int], kind: str,
                 s1_scale: str = "auto", stats=None) -> tuple[np.ndarray, np.ndarray]:
    """Every acquisition resampled (bilinear) onto a target grid, normalised.

    ``stats``: a :class:`~skysense_fast.data.normalisation.Normalisation` (default the spec's).
    Returns (T, bands, h, w) float32 (invalid pixels 0) and validity (T,) bool: an acquisition
    counts as valid on this grid when at least half its pixels hold data (nodata, clouds of
    its mask band, and the area outside its footprint do not).
    """
    x, valid, _ = read_pixels_on_grid(acq, bands, crs, transform, shape, kind, s1_scale, stats)
    return x, valid


def read_pixels_on_grid(acq: list[Acquisition], bands: int, crs, transform, shape: tuple[int, int], kind: str,
                        s1_scale: str = "auto", stats=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`read_on_grid` and, third, which pixels of each acquisition hold data (T, h, w)."""
    out = np.zeros((len(acq), bands, *shape), np.float32)
    valid = np.zeros(len(acq), bool)
    pixel_ok = np.zeros((len(acq), *shape), bool)
    grid = dict(crs=crs, transform=transform, width=shape[1], height=shape[0])
    for i, a in enumerate(acq):
        x = _read_parts(a, grid) if a.parts else _read_file(a, bands, grid, kind)
        ok = np.isfinite(x).all(0)
        x = np.nan_to_num(x)
        if kind == "s1":
            linear = s1_scale == "linear" or (s1_scale == "auto" and x[:, ok].size and x[:, ok].min() >= 0)
            if linear:  # backscatter power -> dB, as the statistics expect
                x = 10 * np.log10(np.maximum(x, 1e-6))
        x = (stats or DEFAULT).apply(x, kind)
        out[i] = np.where(ok, x, 0.0)
        valid[i] = ok.mean() >= 0.5
        pixel_ok[i] = ok
    return out, valid, pixel_ok
