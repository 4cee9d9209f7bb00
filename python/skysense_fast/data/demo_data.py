"""Generated data for the demos, the tiny fine-tuning configs and the tests: an RGB scene with
fields of four crops, a river and a road, its class raster, and classification chips cut from it.

Deterministic (seeded), georeferenced (EPSG:32633, 0.5 m pixels), written atomically::

    python -m skysense_fast.data.demo_data data/demo

writes ``scene.tif`` (RGB, 8-bit), ``labels.tif`` (classes 1..6 as below, 0 = no label: a
strip along the top edge is left unlabelled, as real label rasters have gaps) and
``chips/<class>/*.png`` (64 x 64 chips whose pixels are mostly one class); for change detection
``scene_t2.tif`` (the same area at a second date: other light and noise, and new buildings,
bright roofs with shadows, on some fields) and ``change.tif`` (1 = no change, 2 = change, 0 =
no label along the same top strip).
"""

from __future__ import annotations

import os
import sys

import numpy as np

CLASS_NAMES = ("crop_a", "crop_b", "crop_c", "crop_d", "water", "road")  # label values 1..6
_PALETTE = np.array([[94, 130, 60], [160, 150, 90], [70, 110, 50], [180, 170, 120], [40, 70, 110], [200, 200, 200]],
                    np.float32)
CRS, PIXEL = "EPSG:32633", 0.5
UNLABELLED_ROWS = 24


def scene_classes(size: int) -> np.ndarray:
    """(size, size) class values 1..6 of the generated scene."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cls = ((xx // 96 + yy // 80) % 4).astype(np.int32) + 1
    cls[np.abs(yy - (size * 0.6 + 40 * np.sin(xx / 60))) < 12] = 5
    cls[np.abs(xx - yy * 0.7 - 60) < 4] = 6
    return cls


def _write(path: str, array: np.ndarray, **profile) -> None:
    import rasterio
    from rasterio.transform import from_origin

    tmp = path + ".partial.tif"
    with rasterio.open(tmp, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                       dtype=array.dtype.name, crs=CRS, transform=from_origin(500000, 5000000, PIXEL, PIXEL),
                       **profile) as d:
        d.write(array)
    os.replace(tmp, path)


def write_scene(path: str, size: int = 512, labels: str | None = None) -> None:
    """The RGB scene (and, with ``labels``, its class raster) as GeoTIFFs."""
    cls = scene_classes(size)
    img = _PALETTE[cls - 1].transpose(2, 0, 1)
    img += np.random.default_rng(7).normal(0, 6, img.shape).astype(np.float32)
    _write(path, np.clip(img, 0, 255).astype(np.uint8))
    if labels is not None:
        lab = cls.astype(np.uint8)
        lab[:UNLABELLED_ROWS] = 0
        _write(labels, lab[None], nodata=0)


CHANGE_NAMES = ("no_change", "change")   # change label values 1, 2


def write_second_date(path: str, change: str, size: int = 512, buildings: int = 24) -> None:
    """The scene at a second date: another illumination and sensor noise everywhere (not a
    change), and ``buildings`` new rectangular roofs with a shadow (the change)."""
    cls = scene_classes(size)
    img = _PALETTE[cls - 1].transpose(2, 0, 1) * 0.92 + 6.0
    img += np.random.default_rng(11).normal(0, 6, img.shape).astype(np.float32)
    changed = np.zeros((size, size), bool)
    rng = np.random.default_rng(12)
    for _ in range(buildings):
        h, w = (int(v) for v in rng.integers(10, 28, 2))
        r, c = (int(v) for v in rng.integers(UNLABELLED_ROWS, size - 32, 2))
        roof = np.array([205.0, 120.0, 95.0]) if rng.random() < 0.5 else np.array([225.0, 225.0, 215.0])
        img[:, r:r + h, c:c + w] = roof[:, None, None] + rng.normal(0, 4, (3, h, w))
        img[:, r + h:r + h + 4, c + 2:c + w + 2] *= 0.55           # its shadow
        changed[r:r + h + 4, c:c + w + 2] = True
    _write(path, np.clip(img, 0, 255).astype(np.uint8))
    lab = np.where(changed, 2, 1).astype(np.uint8)
    lab[:UNLABELLED_ROWS] = 0
    _write(change, lab[None], nodata=0)


def write_chips(folder: str, size: int = 512, chip: int = 64) -> int:
    """Chips of the generated scene, one folder per class (the majority class, where it holds
    at least 70% of the chip; mixed chips are skipped). Returns the number written."""
    from PIL import Image

    cls = scene_classes(size)
    img = np.clip(_PALETTE[cls - 1] + np.random.default_rng(8).normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    n = 0
    for r in range(0, size - chip + 1, chip // 2):
        for c in range(0, size - chip + 1, chip // 2):
            counts = np.bincount(cls[r:r + chip, c:c + chip].ravel(), minlength=7)
            major = int(counts.argmax())
            if counts[major] < 0.7 * chip * chip:
                continue
            out = os.path.join(folder, CLASS_NAMES[major - 1])
            os.makedirs(out, exist_ok=True)
            name = os.path.join(out, f"chip_{r:04d}_{c:04d}.png")
            Image.fromarray(img[r:r + chip, c:c + chip]).save(name + ".partial.png")
            os.replace(name + ".partial.png", name)
            n += 1
    return n


def write_demo_data(folder: str, size: int = 512) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {"image": os.path.join(folder, "scene.tif"), "labels": os.path.join(folder, "labels.tif"),
             "chips": os.path.join(folder, "chips"), "image2": os.path.join(folder, "scene_t2.tif"),
             "change": os.path.join(folder, "change.tif")}
    write_scene(paths["image"], size, paths["labels"])
    write_chips(paths["chips"], size)
    write_second_date(paths["image2"], paths["change"], size)
    return paths


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "data/demo"
    for k, v in write_demo_data(out).items():
        print(f"{k}: {v}")
