"""Generated data for the demos, the tiny fine-tuning configs and the tests: an RGB scene with
fields of four crops, a river and a road, its class raster, and classification chips cut from it.

Deterministic (seeded), georeferenced (EPSG:32633, 0.5 m pixels), written atomically::

    python -m skysense_fast.data.demo_data data/demo

writes ``scene.tif`` (RGB, 8-bit), ``labels.tif`` (classes 1..6 as below, 0 = no label: a
strip along the top edge is left unlabelled, as real label rasters have gaps) and
``chips/<class>/*.png`` (64 x 64 chips whose pixels are mostly one class); for change detection
``scene_t2.tif`` (the same area at a second date: other light and noise, and new buildings,
bright roofs with shadows, on some fields) and ``change.tif`` (1 = no change, 2 = change, 0 =
no label along the same top strip); for temporal crop mapping ``s2/S2_<date>.tif`` (a
Sentinel-2 series of six dates over 96 x 96 pixels at 10 m, a cloud-mask band last) and
``crops.tif`` (four crops, 1..4, told apart by when they green up, not by their mean colour).
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
    _write_grid(path, array, PIXEL, **profile)


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


CROP_NAMES = ("winter_wheat", "maize", "sunflower", "grassland")   # crop label values 1..4
CROP_DATES = ("2021-03-15", "2021-04-30", "2021-06-10", "2021-07-20", "2021-08-30", "2021-10-10")


def write_crop_series(folder: str, labels: str, size: int = 96, field: int = 12) -> None:
    """Fields of four crops whose spectra peak at different days of the year (one phenology
    each; over the six dates every crop has the same mean, so a time average cannot tell them
    apart), seen by Sentinel-2 on six dates, one partly cloudy."""
    import datetime as dt

    rng = np.random.default_rng(21)
    cls = rng.integers(1, 5, (size // field + 1, size // field + 1)).repeat(field, 0).repeat(field, 1)[:size, :size]
    peak = np.array([0, 130, 200, 230, 170], np.float32)        # day of the year each crop is greenest
    base = np.array([880, 1140, 1300, 1620, 2190, 2420, 2520, 2580, 2370, 1800], np.float32)
    green = np.array([-300, -200, -500, 300, 900, 1100, 1200, 1200, 200, -300], np.float32)   # NIR up, red down
    os.makedirs(folder, exist_ok=True)
    doys = np.array([dt.date.fromisoformat(d).timetuple().tm_yday for d in CROP_DATES], np.float32)
    season = np.cos(2 * np.pi * (doys[:, None] - peak[None]) / 365)       # (dates, crops)
    season -= season.mean(0)      # over the sampled dates: every crop has the same mean, only the timing differs
    for t, date in enumerate(CROP_DATES):
        x = base[:, None, None] + green[:, None, None] * season[t, cls][None] + rng.normal(0, 120, (10, size, size))
        cloud = np.zeros((1, size, size), np.float32)
        if date == "2021-06-10":
            cloud[:, : size // 3] = 1
        _write_grid(os.path.join(folder, f"S2_{date.replace('-', '')}.tif"),
                    np.concatenate([np.clip(x, 1, 10000), cloud]).astype(np.float32), 10.0)
    _write_grid(labels, cls.astype(np.uint8)[None], 10.0, nodata=0)


def _write_grid(path: str, array: np.ndarray, pixel: float, **profile) -> None:
    import rasterio
    from rasterio.transform import from_origin

    tmp = path + ".partial.tif"
    with rasterio.open(tmp, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                       dtype=array.dtype.name, crs=CRS, transform=from_origin(500000, 5000000, pixel, pixel),
                       **profile) as d:
        d.write(array)
    os.replace(tmp, path)


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
             "change": os.path.join(folder, "change.tif"), "s2": os.path.join(folder, "s2"),
             "crops": os.path.join(folder, "crops.tif")}
    write_scene(paths["image"], size, paths["labels"])
    write_chips(paths["chips"], size)
    write_second_date(paths["image2"], paths["change"], size)
    write_crop_series(paths["s2"], paths["crops"])
    return paths


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "data/demo"
    for k, v in write_demo_data(out).items():
        print(f"{k}: {v}")
