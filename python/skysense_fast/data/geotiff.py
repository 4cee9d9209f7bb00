"""GeoTIFF access for inference: open with checks, centre geolocation, HR normalisation."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from .normalisation import DEFAULT

# HR RGB statistics on 0-255 values (SKYSENSE_SPEC.md §8: ImageNet's, as the official configs use)
HR_MEAN, HR_STD = np.array(DEFAULT.hr_mean, np.float32), np.array(DEFAULT.hr_std, np.float32)


def open_raster(path: str | os.PathLike, bands: int | None = None, what: str = "input", need_crs: bool = True):
    """rasterio dataset for reading; a missing file, a non-raster, a wrong band count or no CRS
    (unless ``need_crs`` is False: a plain image, e.g. a PNG) is a ValueError /
    FileNotFoundError that names the file (``what`` it is) and what was expected."""
    import warnings

    import rasterio

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():   # a plain image has no geotransform: said below, where it matters
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"{path} is not a readable raster ({e})") from None
    if bands is not None and ds.count < bands:
        ds.close()
        raise InputError(f"{path} has {ds.count} band(s); the HR branch needs {bands} (R, G, B)")
    if ds.crs is None and need_crs:
        ds.close()
        raise InputError(f"{path} has no CRS: it is not georeferenced")
    return ds


def scene_latlon(ds, at: tuple[float, float] | None = None) -> tuple[float, float]:
    """Latitude and longitude (degrees, WGS84) of the raster's centre, or of pixel position
    ``at`` = (column, row), for the geo-context."""
    from rasterio.warp import transform

    cx, cy = ds.transform @ (at if at is not None else (ds.width / 2, ds.height / 2))
    lon, lat = transform(ds.crs, "EPSG:4326", [cx], [cy])
    return float(lat[0]), float(lon[0])


def nodata_mask(a: np.ndarray, nodata) -> np.ndarray | None:
    """(h, w) True where a pixel of a (bands, h, w) read holds no data in some band: the
    declared nodata value (a NaN nodata matched as NaN, which ``==`` never does) and, in a
    float raster, any NaN or infinity, declared or not. None when nothing can be nodata."""
    hole = None
    if np.issubdtype(a.dtype, np.floating):
        hole = ~np.isfinite(a)
        if nodata is not None and np.isfinite(nodata):
            hole |= a == nodata
    elif nodata is not None:
        hole = a == nodata
    return None if hole is None else hole.any(0)


def may_hold_nodata(ds) -> bool:
    """Whether a raster can have pixels that :func:`nodata_mask` flags (its output then
    declares NaN as nodata)."""
    return ds.nodata is not None or any(np.issubdtype(np.dtype(d), np.floating) for d in ds.dtypes)


HR_SCALE_HELP = ("--hr-scale max=VALUE (VALUE becomes 255, e.g. max=10000 for reflectance x 10000) or "
                 "--hr-scale percentile=LO,HI (the scene's LO-th / HI-th percentiles per band become 0 / 255)")


class HRScale:
    """(3, h, w) values -> 0-255 floats: (a - offset) * factor, clipped (picklable, so data
    loader workers can take it)."""

    def __init__(self, offset: np.ndarray, factor: np.ndarray):
        self.offset, self.factor = offset, factor

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return np.clip((a.astype(np.float32) - self.offset) * self.factor, 0, 255)


def hr_scaler(ds, spec: str | None, option: str = "--hr-scale") -> HRScale | None:
    """How an HR raster's values become the 0-255 range the model takes: None for an 8-bit
    raster given as is; otherwise from ``spec`` (``max=VALUE`` or ``percentile=LO,HI``, the
    percentiles measured once over the whole scene, nodata excluded). A raster that is not
    8-bit without a ``spec`` is refused: its scale is not guessed. ``option``: the flag the
    errors name (``--hr-scale2`` for a change task's second date)."""
    dtypes = set(ds.dtypes[:3])
    if spec is None:
        if dtypes == {"uint8"}:
            return None
        raise InputError(f"{ds.name} holds {', '.join(sorted(dtypes))} values, not 8-bit RGB: say how they map to "
                         f"0-255 with {HR_SCALE_HELP.replace('--hr-scale', option)}")
    kind, _, value = spec.partition("=")
    try:
        numbers = [float(x) for x in value.split(",")]
    except ValueError:
        numbers = []
    if kind == "max" and len(numbers) == 1 and np.isfinite(numbers[0]) and numbers[0] > 0:
        return HRScale(np.zeros((3, 1, 1), np.float32), np.full((3, 1, 1), 255.0 / numbers[0], np.float32))
    if kind == "percentile" and len(numbers) == 2 and 0 <= numbers[0] < numbers[1] <= 100:
        shape = (3, min(ds.height, 1024), min(ds.width, 1024))
        sample = ds.read([1, 2, 3], out_shape=shape).astype(np.float64)
        hole = nodata_mask(sample, ds.nodata)
        lo, hi = [], []
        for band in sample:
            vals = band[~hole] if hole is not None else band.ravel()
            if vals.size == 0:
                raise InputError(f"{ds.name}: no valid pixels to measure the percentile stretch on")
            p_lo, p_hi = np.percentile(vals, numbers)
            lo.append(p_lo)
            hi.append(p_hi if p_hi > p_lo else p_lo + 1.0)
        lo_a = np.array(lo, np.float32)[:, None, None]
        span = (np.array(hi, np.float32) - np.array(lo, np.float32))[:, None, None]
        return HRScale(lo_a, 255.0 / span)
    raise InputError(f"{option} {spec!r}: expected {HR_SCALE_HELP.replace('--hr-scale', option)}")


def normalise_hr(tile: np.ndarray, stats=None) -> np.ndarray:
    """(3, h, w) 0-255 values -> normalised float32 (``stats``: a Normalisation, default the spec's)."""
    return (stats or DEFAULT).apply(tile[:3], "hr")


def read_hr_window(image: str, r: int, c: int, size: int, scale=None, stats=None, nodata=None,
                   ds=None) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """A ``size`` x ``size`` window of an HR image at (row, col) ``r``, ``c``, as training reads it:
    ((3, size, size) float32 normalised, zero beyond the image and on nodata; its (h, w) nodata
    mask or None; h; w: the part inside the image). ``ds``: the open image (else opened here)."""
    from rasterio.windows import Window

    own = ds is None
    ds = open_raster(image, bands=3) if own else ds
    try:
        h, w = min(size, ds.height - r), min(size, ds.width - c)
        a = ds.read([1, 2, 3], window=Window(c, r, w, h))
    finally:
        if own:
            ds.close()
    x = np.zeros((3, size, size), np.float32)
    x[:, :h, :w] = normalise_hr(a if scale is None else scale(a), stats)
    hole = nodata_mask(a, nodata)
    if hole is not None:
        x[:, :h, :w][:, hole] = 0.0
    return x, hole, h, w


def read_onto(ds, crs, transform, height: int, width: int) -> np.ndarray:
    """Bands 1-3 of ``ds`` (another image of the scene: a second date) resampled (bilinear)
    onto a grid (``crs``, ``transform``, ``height`` x ``width``): (3, h, w) float32, NaN where
    it holds no data: beyond its footprint, or in a band that holds its nodata value there (each
    band masked on its own, GDAL's ``UNIFIED_SRC_NODATA=NO``: a pixel with the nodata value in any
    band is a hole, as :func:`nodata_mask` takes it on the first date)."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with WarpedVRT(ds, crs=crs, transform=transform, width=width, height=height, resampling=Resampling.bilinear,
                   src_nodata=ds.nodata, nodata=np.nan, dtype="float32", UNIFIED_SRC_NODATA="NO") as v:
        return v.read([1, 2, 3])


def read_second_date(path: str, crs, transform, height: int, width: int, scale=None,
                     stats=None) -> tuple[np.ndarray, np.ndarray]:
    """A change task's second date on a window of the first's grid: ((3, h, w) float32
    normalised, zero where it holds no data; (h, w) bool, True there)."""
    with open_raster(path, bands=3) as ds:
        b = read_onto(ds, crs, transform, height, width)
    gap = ~np.isfinite(b).all(0)
    b = np.nan_to_num(b)
    x = normalise_hr(b if scale is None else scale(b), stats)
    return np.where(gap[None], 0.0, x).astype(np.float32), gap


def check_same_scene(ds, other, what: str = "the second image") -> None:
    """Errors before any work: ``other`` lacks three bands or a CRS, or misses ``ds``'s area."""
    from rasterio.warp import transform_bounds

    if other.count < 3:
        raise InputError(f"{other.name}: {what} has {other.count} band(s); it needs 3 (R, G, B) as the first")
    if other.crs is None:
        raise InputError(f"{other.name}: {what} has no CRS: it cannot be put onto {ds.name}'s grid")
    left, bottom, right, top = transform_bounds(other.crs, ds.crs, *other.bounds, densify_pts=21)
    a = ds.bounds
    if not (left < a.right and right > a.left and bottom < a.top and top > a.bottom):
        raise InputError(f"{other.name}: {what} does not overlap {ds.name}")
