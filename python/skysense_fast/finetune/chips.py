"""Scene-classification chips: a folder per class (``root/<class>/*.tif|png|jpg``, as AID and
NWPU-RESISC45 ship) or a CSV of ``file,label`` rows (paths relative to the CSV; BigEarthNet-
style multi-label rows separate labels with ``|``). Images are read with rasterio (GDAL reads
GeoTIFF, PNG and JPEG alike) and normalised with the model's HR statistics."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..data.geotiff import normalise_hr
from ..errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def read_chip_list(source: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """(image paths, labels per image) from a class-folder root or a CSV file."""
    source = os.fspath(source)
    if os.path.isdir(source):
        paths, labels = [], []
        for cls in sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d))):
            for name in sorted(os.listdir(os.path.join(source, cls))):
                if name.lower().endswith(IMAGE_SUFFIXES):
                    paths.append(os.path.join(source, cls, name))
                    labels.append([cls])
    elif os.path.isfile(source):
        base = os.path.dirname(os.path.abspath(source))
        paths, labels = [], []
        with open(source, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or (i == 0 and [c.strip().lower() for c in row[:2]] == ["file", "label"]):
                    continue
                if len(row) < 2:   # an empty label: a multi-label chip of no class (ChipDataset checks)
                    raise InputError(f"{source}: row {i + 1} must be file,label, got {row}")
                paths.append(os.path.join(base, row[0].strip()))
                labels.append([s.strip() for s in row[1].split("|") if s.strip()])
    else:
        raise FileNotFoundError(f"chips not found: {source} (a folder per class, or a CSV of file,label)")
    if not paths:
        raise InputError(f"{source} lists no image chips ({', '.join(IMAGE_SUFFIXES)})")
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise InputError(f"{source}: {len(missing)} listed chip(s) do not exist, e.g. {missing[0]}")
    return paths, labels


def read_chip(path: str, stats=None) -> torch.Tensor:
    """An 8-bit RGB chip (GeoTIFF, PNG or JPEG, read with rasterio) as (3, H, W) float32,
    normalised with the model's HR statistics."""
    import warnings

    import rasterio

    try:
        with warnings.catch_warnings():  # PNG / JPEG chips have no geotransform, and need none
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            f = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"{path} is not a readable image ({e})") from None
    with f:
        if f.count < 3:
            raise InputError(f"{path} has {f.count} band(s); chips need 3 (R, G, B)")
        if f.dtypes[0] != "uint8":
            raise InputError(f"{path} is {f.dtypes[0]}; chips are 8-bit RGB")
        return torch.from_numpy(normalise_hr(f.read([1, 2, 3]), stats))


class ChipDataset(torch.utils.data.Dataset):
    """(image (3, H, W) float32 normalised, target) pairs; target is a class index, or a
    (num_classes,) 0/1 vector when ``multi_label``. ``classes`` fixes the class order (the one
    stored with the weights); by default the sorted label names."""

    def __init__(self, source: str | os.PathLike, classes: Sequence[str] | None = None, multi_label: bool = False,
                 stats=None):
        self.paths, self.labels = read_chip_list(source)
        found = sorted({lab for labs in self.labels for lab in labs})
        self.classes = list(classes) if classes is not None else found
        stray = sorted(set(found) - set(self.classes))
        if stray:
            raise InputError(f"{source}: labels {stray[:10]} are not among the classes {self.classes}")
        if not multi_label and any(len(labs) != 1 for labs in self.labels):
            n = next(len(labs) for labs in self.labels if len(labs) != 1)
            raise InputError(f"{source}: a chip has {n} labels; single-label chips need one (set multi_label for "
                             "multi-label data)")
        self.multi_label, self.stats = multi_label, stats
        self.index = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        x = read_chip(self.paths[i], self.stats)
        if self.multi_label:
            y = torch.zeros(len(self.classes))
            y[[self.index[c] for c in self.labels[i]]] = 1
        else:
            y = torch.tensor(self.index[self.labels[i][0]])
        return x, y

    def counts(self) -> np.ndarray:
        """Chips per class (for class weights)."""
        n = np.zeros(len(self.classes), np.int64)
        for labs in self.labels:
            for c in labs:
                n[self.index[c]] += 1
        return n
