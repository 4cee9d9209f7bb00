"""The class-map sink of ``predict``: blended class probabilities in, a single-band integer
class map out, in the labels' own class values, as a Cloud-Optimized GeoTIFF.

Rows are written to a tiled GeoTIFF under a temporary name; ``finish`` converts it with GDAL's
COG driver (overviews by the modal class, so a zoomed-out view shows the dominant class, not a
blend of values) and renames it into place. The file carries a colour table (one distinct
colour per class; nodata transparent), the class names as band metadata (``CLASS_<value>``
and ``CLASS_NAMES`` as JSON) and the nodata value: pixels whose input is nodata.
"""

from __future__ import annotations

import colorsys
import json
import os

import numpy as np

from ..data.labels import ClassMap
from .sinks import FileSink


def class_map_encoding(classes: ClassMap) -> tuple[str, int]:
    """(dtype, nodata) that hold every class value with a nodata value that is no class."""
    lo, hi = min(classes.values), max(classes.values)
    for dtype, top in (("uint8", 255), ("uint16", 65535)):
        if lo >= 0 and hi <= top:
            free = [v for v in (0, top) if v not in classes.values]
            if free:
                return dtype, free[0]
    return "int32", lo - 1 if lo > np.iinfo(np.int32).min else hi + 1


def colours(n: int) -> list[tuple[int, int, int]]:
    """n well-separated colours: hues spaced by the golden angle, two alternating lightnesses."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb((i * 0.381966) % 1.0, 0.45 if i % 2 else 0.6, 0.75)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


class ClassMapSink:
    """(C, h, W) probabilities (NaN where the input is nodata) -> class values; optionally the
    probabilities themselves into a second GeoTIFF (``probabilities``)."""

    def __init__(self, path: str, profile: dict, classes: ClassMap, probabilities: str | None = None):
        import rasterio

        self.path, self.classes = path, classes
        self.dtype, self.nodata = class_map_encoding(classes)
        prof = dict(profile, count=1, dtype=self.dtype, nodata=self.nodata, compress="deflate", tiled=True,
                    blockxsize=256, blockysize=256)
        self.out = rasterio.open(path, "w", **prof)
        self.bands = 1
        names = classes.class_names()
        self.out.set_band_description(1, "class")
        self.out.update_tags(1, CLASS_NAMES=json.dumps(dict(zip(map(str, classes.values), names, strict=True))),
                             **{f"CLASS_{v}": n for v, n in zip(classes.values, names, strict=True)})
        if self.dtype in ("uint8", "uint16"):
            table = {v: (*c, 255) for v, c in zip(classes.values, colours(classes.num_classes), strict=True)}
            table[self.nodata] = (0, 0, 0, 0)
            self.out.write_colormap(1, table)
        self.probs = None
        if probabilities is not None:
            self.probs = FileSink(probabilities + ".partial", dict(profile, dtype="float32", nodata=float("nan")),
                                  "probability")
            self.probs_final = probabilities

    def write(self, y: int, block: np.ndarray) -> None:
        from rasterio.windows import Window

        hole = ~np.isfinite(block).all(0)
        idx = np.nan_to_num(block, nan=-1.0).argmax(0)
        values = self.classes.to_values(idx).astype(self.dtype)
        values[hole] = self.nodata
        self.out.write(values[None], window=Window(0, y, block.shape[2], block.shape[1]))
        if self.probs is not None:
            self.probs.write(y, block)

    def finish(self, final: str) -> None:
        from rasterio.shutil import copy

        self.out.close()
        cog = final + ".cog.partial"
        try:
            copy(self.path, cog, driver="COG", compress="deflate", blocksize=256, overview_resampling="mode",
                 overviews="auto", BIGTIFF="IF_SAFER")
            os.replace(cog, final)
        finally:
            for p in (cog, self.path):
                if os.path.exists(p):
                    os.unlink(p)
        if self.probs is not None:
            self.probs.finish(self.probs_final)

    def abort(self) -> None:
        if not self.out.closed:
            self.out.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        if self.probs is not None:
            self.probs.abort()
