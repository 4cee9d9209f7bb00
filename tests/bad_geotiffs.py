"""A seeded corpus of bad GeoTIFFs for the CLI tests, made on the fly (no committed binaries):
each is (name, bytes-or-writer, the words the one-line error must contain)."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.transform import from_origin


def _good(path, count=3, dtype="uint8", crs="EPSG:32633", size=64, seed=0):
    img = np.random.default_rng(seed).integers(0, 255, (count, size, size)).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=count, dtype=dtype, crs=crs,
                       transform=from_origin(500000, 5000000, 0.5, 0.5)) as d:
        d.write(img)


def corpus(folder) -> dict[str, tuple[str, str]]:
    """{case: (path, expected words)} written into `folder`."""
    _good(folder / "good.tif")
    good = (folder / "good.tif").read_bytes()
    rng = np.random.default_rng(7)
    files = {
        "empty file": (b"", "good"),
        "truncated": (good[: len(good) // 3], ""),
        "not a tiff": (rng.integers(0, 255, 4096).astype(np.uint8).tobytes(), "not recognized"),
        "header only": (good[:16], ""),
    }
    out = {}
    for case, (data, words) in files.items():
        path = folder / (case.replace(" ", "_") + ".tif")
        path.write_bytes(data)
        out[case] = (str(path), words)
    _good(folder / "one_band.tif", count=1)
    out["one band"] = (str(folder / "one_band.tif"), "band")
    return out
