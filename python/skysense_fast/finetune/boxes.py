"""Boxes in pixels (xyxy, float, x = column): from a vector layer on an image's grid, cut to a
window, and turned with the image by the eight symmetries of :mod:`.augment`."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..data.labels import ClassMap, read_vector_labels
from ..errors import InputError


def vector_boxes(path: str, field: str, image, classes: ClassMap | None = None,
                 names=None) -> tuple[np.ndarray, np.ndarray, ClassMap]:
    """(boxes (N, 4) float64 pixel xyxy on ``image``'s grid, class indices (N,), classes) of a
    vector layer: each feature's bounding box once put into the image's CRS, cut at the image's
    edge; features off the image are left out (none on it is an error)."""
    import shapely
    from rasterio.warp import transform_geom

    crs, geoms, values = read_vector_labels(path, field)
    classes = classes or ClassMap(tuple(sorted(set(values.tolist()))), tuple(names or ()), at_least=1)
    index = classes.to_index(values, np.ones(len(values), bool), path)   # every feature's class is a class
    try:
        shapes = [shapely.geometry.shape(transform_geom(crs, image.crs, g)) for g in geoms]
    except Exception as e:  # PROJ's errors vary by version
        raise InputError(f"{path}: its CRS ({crs}) cannot be put onto the image's ({image.crs}): {e}") from None
    inv = ~image.transform
    to_pixels = [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]
    boxes = np.array([shapely.affinity.affine_transform(s, to_pixels).bounds for s in shapes],
                     np.float64).reshape(-1, 4)
    boxes = clip(boxes, 0, 0, image.width, image.height)
    on = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not on.any():
        raise InputError(f"{path}: no box falls on the image {image.name}")
    return boxes[on], index[on], classes


def clip(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(x0, x1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(y0, y1)
    return out


def area(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)


def centres_in(boxes: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Which boxes have their centre in [x0, x1) x [y0, y1)."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)


def in_window(boxes: np.ndarray, labels: np.ndarray, x0: int, y0: int, w: int, h: int,
              min_visible: float = 0.5) -> tuple[Tensor, Tensor]:
    """The boxes at least ``min_visible`` of whose area lies in the window, cut to it, in the
    window's pixels: (n, 4) float32, (n,) int64."""
    cut = clip(boxes, x0, y0, x0 + w, y0 + h)
    keep = area(cut) >= min_visible * np.maximum(area(boxes), 1e-12)
    keep &= area(cut) > 0
    cut = cut[keep] - np.array([x0, y0, x0, y0], np.float64)
    return torch.from_numpy(cut.astype(np.float32)).reshape(-1, 4), torch.from_numpy(labels[keep].astype(np.int64))


def d4_boxes(boxes: Tensor, k: int, height: int, width: int) -> Tensor:
    """The boxes of a (height, width) image after :func:`~.augment.d4_transform` ``k``: k % 4
    quarter turns (``torch.rot90`` over (rows, columns)), then a horizontal flip when k >= 4."""
    if not 0 <= k < 8:
        raise ValueError(f"d4_boxes: k must be in 0..7, got {k}")
    b = boxes.clone()
    h, w = height, width
    for _ in range(k % 4):   # rot90: the pixel at (row y, column x) goes to (w - x, y)
        b = torch.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], 1)
        h, w = w, h
    if k >= 4:
        b = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    return b
