"""Segmentation training data from a user's scene: an HR GeoTIFF and its labels (a class raster
in any CRS, or a vector layer), put on the image's grid once, split into spatial blocks
(:mod:`.split`), and read as crops.

All the checks run when the data is opened, before a model is built: the image has three
bands and a CRS, the labels overlap it and their CRS resolves, every class value they hold is
a configured class, and both the training and the validation blocks hold labels. Image
nodata pixels are zero input and no label. A crop at step s, sample i is drawn from a
generator seeded by (seed, s, i): resumed and data-parallel runs see the same crops.
"""

from __future__ import annotations

import numpy as np
import torch
from rasterio.transform import Affine

from ..data.geotiff import (
    check_same_scene,
    hr_scaler,
    open_raster,
    read_hr_window,
    read_second_date,
    scene_latlon,
)
from ..data.labels import (
    IGNORE_INDEX,
    ClassMap,
    class_map_of,
    is_vector,
    labels_on_grid,
    rasterize_labels,
    vector_class_map,
)
from ..data.series import BAND_COUNT, check_coverage, read_on_grid
from ..errors import InputError
from ..infer.tiler import SCALE
from .augment import d4_transform
from .split import spatial_split


class SceneSegmentationData:
    """Samples are dicts: ``hr`` (3, crop, crop) normalised, ``target`` (crop, crop) class
    indices; with ``image2`` (the second date of a change task) ``hr2`` on the same pixels; per
    series given (``series``: {"s2": acquisitions, "s1": ...}) ``<kind>`` (T, bands, crop / 32,
    crop / 32) on the crop's fusion grid, ``valid_<kind>`` (T,), ``doy_<kind>`` (T,)."""

    def __init__(self, image: str, labels: str, *, classes: ClassMap | None = None, class_names=None,
                 label_field: str = "class", hr_scale: str | None = None, crop: int = 256, block: int = 512,
                 val_fraction: float = 0.2, seed: int = 0, stats=None, series: dict | None = None,
                 image2: str | None = None, hr_scale2: str | None = None):
        self.image, self.image2, self.crop, self.stats = image, image2, crop, stats
        self.series = {k: v for k, v in (series or {}).items() if v}
        vector = is_vector(labels)
        if classes is None:
            classes = (vector_class_map(labels, label_field, class_names) if vector
                       else class_map_of(labels, class_names))
        self.classes = classes
        with open_raster(image, bands=3) as ds:
            self.height, self.width, self.nodata = ds.height, ds.width, ds.nodata
            self.hr_scale = hr_scaler(ds, hr_scale)    # an image that is not 8-bit needs it: checked here
            idx = rasterize_labels(labels, ds, classes, label_field) if vector else labels_on_grid(labels, ds, classes)
            self.latlon = scene_latlon(ds)
            self.crs, self.transform = ds.crs, ds.transform
            for kind, acq in self.series.items():
                check_coverage(acq, ds.crs, ds.bounds, kind)
            if image2 is not None:   # a second date (change): read onto this grid, window by window
                with open_raster(image2, bands=3, what="data.image2") as ds2:
                    check_same_scene(ds, ds2)
                    self.hr_scale2 = hr_scaler(ds2, hr_scale2 if hr_scale2 is not None else hr_scale, "data.hr_scale2")
        if self.height < crop or self.width < crop:
            raise InputError(f"{image} is {self.height} x {self.width} pixels, smaller than data.crop ({crop})")
        self.labels: np.ndarray = idx.astype(np.int16 if classes.num_classes < 2**15 else np.int32)
        if not (self.labels != IGNORE_INDEX).any():
            raise InputError(f"{labels} labels no pixel of {image}")
        self.split = spatial_split(self.labels != IGNORE_INDEX, block, val_fraction, seed)

    def counts(self) -> np.ndarray:
        """Labelled pixels per class in the training blocks (for class weights)."""
        n = np.zeros(self.classes.num_classes, np.int64)
        for r, c, h, w in self.split.windows("train", self.height, self.width):
            lab = self.labels[r:r + h, c:c + w]
            n += np.bincount(lab[lab >= 0].ravel(), minlength=len(n))
        return n

    def read(self, r: int, c: int, size: int, ds=None) -> dict[str, torch.Tensor]:
        """The sample of the window at (r, c); what lies beyond the scene is zero input and no
        label (and invalid series pixels)."""
        x, hole, h, w = read_hr_window(self.image, r, c, size, self.hr_scale, self.stats, self.nodata, ds)
        y = np.full((size, size), IGNORE_INDEX, np.int64)
        y[:h, :w] = self.labels[r:r + h, c:c + w]
        if hole is not None:
            y[:h, :w][hole] = IGNORE_INDEX
        if self.image2 is not None:   # the second date on this window's pixels; its holes: no input, no label
            x2 = np.zeros((3, size, size), np.float32)
            x2[:, :h, :w], gap = read_second_date(self.image2, self.crs, self.transform @ Affine.translation(c, r),
                                                  h, w, self.hr_scale2, self.stats)
            y[:h, :w][gap] = IGNORE_INDEX
        sample = {"hr": torch.from_numpy(x), "target": torch.from_numpy(y)}
        if self.image2 is not None:
            sample["hr2"] = torch.from_numpy(x2)
        grid = self.transform @ Affine.translation(c, r) @ Affine.scale(SCALE, SCALE)
        for kind, acq in self.series.items():
            xs, ok = read_on_grid(acq, BAND_COUNT[kind], self.crs, grid, (size // SCALE, size // SCALE), kind,
                                  stats=self.stats)
            sample |= {kind: torch.from_numpy(xs), f"valid_{kind}": torch.from_numpy(ok),
                       f"doy_{kind}": torch.tensor([a.doy for a in acq])}
        return sample

    def train_sample(self, generator: torch.Generator, augment: bool, ds=None):
        """A random crop inside a random training block, with a random D4 symmetry."""
        r, c, br, bc, bh, bw = self.split.random_crop(self.height, self.width, self.crop, generator)
        sample = self.read(r, c, self.crop, ds)
        y = sample["target"]
        # keep the crop inside its block: labels of a neighbouring (held-out) block are not trained on
        y[max(0, br + bh - r):, :] = IGNORE_INDEX
        y[:, max(0, bc + bw - c):] = IGNORE_INDEX
        if augment:  # one symmetry for every map of the sample (the series' grids turn with the image)
            k = int(torch.randint(8, (1,), generator=generator))
            sample = {n: d4_transform(v, k) if v.dim() >= 2 else v for n, v in sample.items()}
        return sample

    def val_windows(self) -> list[tuple[int, int, int]]:
        """(row, col, size) crops covering the validation blocks (each within its block)."""
        out = []
        for r0, c0, h, w in self.split.windows("val", self.height, self.width):
            for r in range(r0, r0 + h, self.crop):
                for c in range(c0, c0 + w, self.crop):
                    out.append((r, c, self.crop))
        return out

    def val_sample(self, window, ds=None):
        r, c, size = window
        sample = self.read(r, c, size, ds)
        y = sample["target"]
        # labels outside this window's validation block are not scored
        block = self.split.block
        br, bc = (r // block) * block, (c // block) * block
        y[max(0, br + block - r):, :] = IGNORE_INDEX
        y[:, max(0, bc + block - c):] = IGNORE_INDEX
        return sample
