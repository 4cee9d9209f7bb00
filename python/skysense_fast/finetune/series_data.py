"""Training data of a task on Sentinel series alone (temporal crop mapping): a class raster on
the Sentinel grid (its pixels are the series' pixels, e.g. 10 m) and the S2 / S1 series over
it, read onto each crop's grid (any CRS / resolution, dates, clouds and validity as everywhere).

The split, the crops and their seeding follow :class:`~.scene_data.SceneSegmentationData`;
crops are in label pixels. Samples: ``target`` (crop, crop) class indices and per series
``<kind>`` (T, bands, crop, crop), ``valid_<kind>`` (T,), ``doy_<kind>`` (T,).
"""

from __future__ import annotations

import numpy as np
import torch
from rasterio.transform import Affine

from ..data.geotiff import open_raster, scene_latlon
from ..data.labels import IGNORE_INDEX, ClassMap, class_map_of, is_vector, labels_on_grid
from ..data.series import BAND_COUNT, check_coverage, read_pixels_on_grid
from ..errors import InputError
from .scene_data import SceneSegmentationData
from .split import spatial_split


class SeriesSegmentationData(SceneSegmentationData):
    """Windows of the label grid, each read from the series; training and validation windows
    as the HR scene data's (crops inside training blocks, whole held-out blocks)."""

    def __init__(self, labels: str, series: dict, *, classes: ClassMap | None = None, class_names=None,
                 crop: int = 32, block: int = 64, val_fraction: float = 0.2, seed: int = 0, stats=None):
        self.crop, self.stats, self.image2 = crop, stats, None
        self.series = {k: v for k, v in series.items() if v}
        if not self.series:
            raise InputError("a task on Sentinel series needs data.s2 and / or data.s1")
        if is_vector(labels):
            raise InputError(f"{labels}: a task on Sentinel series takes a class raster on the Sentinel grid (its "
                             "pixels are the ones predicted); rasterise vector labels onto that grid first")
        self.classes = classes if classes is not None else class_map_of(labels, class_names)
        with open_raster(labels, what="data.labels") as ds:
            self.height, self.width = ds.height, ds.width
            self.crs, self.transform = ds.crs, ds.transform
            self.latlon = scene_latlon(ds)
            idx = labels_on_grid(labels, ds, self.classes)
            for kind, acq in self.series.items():
                check_coverage(acq, ds.crs, ds.bounds, kind)
        if self.height < crop or self.width < crop:
            raise InputError(f"{labels} is {self.height} x {self.width} pixels, smaller than data.crop ({crop})")
        self.labels = idx.astype(np.int16 if self.classes.num_classes < 2**15 else np.int32)
        if not (self.labels != IGNORE_INDEX).any():
            raise InputError(f"{labels} holds no label")
        self.split = spatial_split(self.labels != IGNORE_INDEX, block, val_fraction, seed)

    def read(self, r: int, c: int, size: int, ds=None) -> dict[str, torch.Tensor]:
        h, w = min(size, self.height - r), min(size, self.width - c)
        y = np.full((size, size), IGNORE_INDEX, np.int64)
        y[:h, :w] = self.labels[r:r + h, c:c + w]
        sample: dict[str, torch.Tensor] = {}
        grid = self.transform @ Affine.translation(c, r)
        seen = np.zeros((size, size), bool)
        for kind, acq in self.series.items():
            xs, ok, px = read_pixels_on_grid(acq, BAND_COUNT[kind], self.crs, grid, (size, size), kind,
                                             stats=self.stats)
            seen |= px[ok].any(0) if ok.any() else False
            sample |= {kind: torch.from_numpy(xs), f"valid_{kind}": torch.from_numpy(ok),
                       f"doy_{kind}": torch.tensor([a.doy for a in acq])}
        y[~seen] = IGNORE_INDEX   # no valid acquisition holds data there: no input, no label (as predict)
        sample["target"] = torch.from_numpy(y)
        return sample
