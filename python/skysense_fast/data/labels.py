"""Labels for training: class rasters or vector layers, in any CRS, put onto the image's grid.

A label raster is reprojected onto (a window of) the image grid with nearest-neighbour
resampling (classes are never blended); its nodata, and whatever lies outside it, is "no
label" (``ignore_index``). A vector layer (GeoPackage, GeoJSON, Shapefile: polygons or points
with an integer class attribute, read with pyogrio) is reprojected and rasterised onto the same
grid (a point labels the pixel it falls in); unlabelled pixels are "no label" too. Class values
(e.g. 1..7, as the file stores them) map to
contiguous indices 0..C-1 for training, and back for prediction: :class:`ClassMap` travels
with the weights so a class map comes out in the label raster's own values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

IGNORE_INDEX = -1
_OUTSIDE = int(np.iinfo(np.int32).min)  # where the labels do not reach (no class takes it: int32 classes)


@dataclass(frozen=True)
class ClassMap:
    """The label raster's class values (sorted), their names, and the index of each."""

    values: tuple[int, ...]
    names: tuple[str, ...] = field(default=())
    at_least: int = field(default=2, compare=False)   # a class map needs two; detection's objects one

    def __post_init__(self):
        if len(self.values) < self.at_least or len(set(self.values)) != len(self.values):
            raise InputError(f"classes: need at least {self.at_least} distinct class value(s), got {list(self.values)}")
        if list(self.values) != sorted(self.values):
            raise InputError(f"classes: the class values must be sorted, got {list(self.values)}")
        if self.names and len(self.names) != len(self.values):
            raise InputError(f"classes: {len(self.names)} names for {len(self.values)} class values")

    @property
    def num_classes(self) -> int:
        return len(self.values)

    def class_names(self) -> list[str]:
        return list(self.names) if self.names else [str(v) for v in self.values]

    def to_index(self, raw: np.ndarray, valid: np.ndarray, where: str) -> np.ndarray:
        """Raw class values -> indices 0..C-1 (IGNORE_INDEX where not valid); a value that is no
        class is an error naming it."""
        values = np.asarray(self.values)
        idx = np.searchsorted(values, raw)
        known = (idx < len(values)) & (values[np.minimum(idx, len(values) - 1)] == raw)
        stray = valid & ~known
        if stray.any():
            extra = sorted(set(np.unique(raw[stray]).tolist()))
            raise InputError(f"{where} holds class values {extra[:10]} that are not among the {self.num_classes} "
                             f"configured classes {list(self.values)}")
        return np.where(valid, idx, IGNORE_INDEX).astype(np.int64)

    def to_values(self, index: np.ndarray) -> np.ndarray:
        """Indices 0..C-1 -> the label raster's class values."""
        return np.asarray(self.values)[index]


def class_map_of(path: str | os.PathLike, names: Sequence[str] | None = None,
                 values: Sequence[int] | None = None) -> ClassMap:
    """The classes of a label raster: ``values`` as given (configs), else every value the file
    holds outside its nodata (read block by block)."""
    if values is not None:
        return ClassMap(tuple(sorted(int(v) for v in values)), tuple(names or ()))
    found: set[int] = set()
    with _open_labels(path) as src:
        nodata = src.nodata
        for _, window in src.block_windows(1):
            a = src.read(1, window=window)
            found |= set(np.unique(a[a != nodata] if nodata is not None else a).tolist())
    if not found:
        raise InputError(f"{path} holds no labelled pixel (everything is nodata {nodata})")
    return ClassMap(tuple(sorted(int(v) for v in found)), tuple(names or ()))


def _open_labels(path: str | os.PathLike):
    from .geotiff import open_raster

    src = open_raster(path, what="labels")  # georeferenced, or an error naming the file
    if np.dtype(src.dtypes[0]).kind not in "iu" or np.dtype(src.dtypes[0]).itemsize > 4 or src.dtypes[0] == "uint32":
        src.close()
        raise InputError(f"{path} is {src.dtypes[0]}: a class raster holds integer classes of up to 32 bits "
                         "(int8 .. int32, uint8, uint16)")
    return src


def labels_on_grid(path: str | os.PathLike, image, classes: ClassMap, window=None,
                   must_overlap: bool = True) -> np.ndarray:
    """Class indices (H, W) int64 of a label raster on ``image``'s grid (an open rasterio
    dataset), or on a rasterio ``window`` of it; IGNORE_INDEX where the raster has nodata or
    does not reach. Labels that miss the image (window) altogether are an error, or with
    ``must_overlap=False`` all IGNORE_INDEX (a window of a scene that is labelled elsewhere)."""
    from rasterio.warp import Resampling, reproject, transform_bounds
    from rasterio.windows import Window
    from rasterio.windows import bounds as window_bounds
    from rasterio.windows import transform as window_transform

    window = window or Window(0, 0, image.width, image.height)
    h, w = int(window.height), int(window.width)
    with _open_labels(path) as src:
        try:
            lb = transform_bounds(src.crs, image.crs, *src.bounds)
        except Exception as e:  # PROJ's errors vary by version
            raise InputError(f"{path}: its CRS ({src.crs}) cannot be put onto the image's ({image.crs}): {e}") from None
        ib = window_bounds(window, image.transform)
        if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
            if not must_overlap:
                return np.full((h, w), IGNORE_INDEX, np.int64)
            raise InputError(f"{path} does not overlap the image {image.name} (labels {lb}, image {ib} in "
                             f"{image.crs})")
        marker = _OUTSIDE
        raw = np.full((h, w), marker, np.int32)
        reproject(source=src.read(1).astype(np.int32), destination=raw, src_transform=src.transform,
                  src_crs=src.crs, src_nodata=src.nodata, dst_transform=window_transform(window, image.transform),
                  dst_crs=image.crs, dst_nodata=marker, resampling=Resampling.nearest)
        valid = raw != marker
        if src.nodata is not None:
            valid &= raw != int(src.nodata)
    return classes.to_index(raw, valid, str(path))


VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")


def is_vector(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(VECTOR_SUFFIXES)


def read_vector_labels(path: str | os.PathLike, field: str) -> tuple[object, list[dict], np.ndarray]:
    """(CRS, GeoJSON-like geometries, integer class values) of a vector layer."""
    try:
        import pyogrio
        import shapely
    except ImportError as e:
        raise InputError(f"vector labels need pyogrio and shapely (pip install 'skysense-fast[vector]'): {e}") from None
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"labels not found: {path}")
    try:
        meta, _, wkb, fields = pyogrio.raw.read(path, columns=[field])
    except Exception as e:  # GDAL's read errors come in several types
        raise InputError(f"{path} is not a readable vector layer ({e})") from None
    if field not in list(meta["fields"]):
        raise InputError(f"{path} has no attribute {field!r} (it has {', '.join(meta['fields']) or 'none'})")
    if meta["crs"] is None:
        raise InputError(f"{path} has no CRS: labels must be georeferenced to be put on the image's grid")
    values = np.asarray(fields[list(meta["fields"]).index(field)])
    if values.dtype.kind not in "iu" and not (values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0)):
        raise InputError(f"{path}: attribute {field!r} must hold integer classes, got {values.dtype}")
    keep = np.array([g is not None for g in wkb], bool)
    geoms = [shapely.geometry.mapping(g) for g in shapely.from_wkb(wkb[keep])]
    return meta["crs"], geoms, values[keep].astype(np.int64)


def vector_class_map(path: str | os.PathLike, field: str, names: Sequence[str] | None = None) -> ClassMap:
    _, _, values = read_vector_labels(path, field)
    return ClassMap(tuple(sorted(set(values.tolist()))), tuple(names or ()))


def rasterize_labels(path: str | os.PathLike, image, classes: ClassMap, field: str, window=None,
                     must_overlap: bool = True) -> np.ndarray:
    """Class indices (H, W) int64 of a vector layer rasterised on ``image``'s grid (or a window
    of it); later features overwrite earlier ones where they overlap. No feature on the grid is
    an error, or with ``must_overlap=False`` all IGNORE_INDEX."""
    from rasterio.features import rasterize
    from rasterio.warp import transform_geom
    from rasterio.windows import Window
    from rasterio.windows import bounds as window_bounds
    from rasterio.windows import transform as window_transform

    crs, geoms, values = read_vector_labels(path, field)
    window = window or Window(0, 0, image.width, image.height)
    try:
        geoms = [transform_geom(crs, image.crs, g) for g in geoms]
    except Exception as e:  # PROJ's errors vary by version
        raise InputError(f"{path}: its CRS ({crs}) cannot be put onto the image's ({image.crs}): {e}") from None
    classes.to_index(values, np.ones(len(values), bool), str(path))  # every feature's class is a class
    ib = window_bounds(window, image.transform)
    shape = (int(window.height), int(window.width))
    raw = rasterize(list(zip(geoms, values.tolist(), strict=True)), out_shape=shape, fill=_OUTSIDE,
                    transform=window_transform(window, image.transform), dtype="int32") if geoms else \
        np.full(shape, _OUTSIDE, np.int32)
    valid = raw != _OUTSIDE
    if not valid.any() and must_overlap:
        raise InputError(f"{path}: no labelled feature falls on the image {image.name} ({ib} in {image.crs})")
    return classes.to_index(raw, valid, str(path))
