"""Detection over a large scene: a detection task's boxes as a GeoPackage layer in the scene's CRS.

The scene is read in overlapping tiles through the shared tiler (:func:`.tiler.run_tiles`: HR
scaling, nodata as zero input, prefetching); each tile answers for its core (the tile less half
the overlap on every side inside the scene), so an object no larger than the overlap that one
tile's edge cuts is taken from a tile that sees it whole. Two neighbouring tiles can still give
one object twice (a box each side of their cores' border): a box is dropped where a neighbouring
tile's box of its class overlaps it by more than the NMS threshold with a higher score (NMS
between neighbours only, without the chains of a greedy pass: linear in the scene's size, where
one NMS over a whole scene's boxes is quadratic). Boxes whose centre lies on nodata are dropped.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import replacing
from ..data.geotiff import hr_scaler, open_raster
from ..errors import InputError
from ..progress import bar
from .runner import refuse_to_overwrite_an_input
from .tiler import SCALE, run_tiles, tile_starts

LAYER = "detections"


class _Boxes(nn.Module):
    """A detection task as the tiler calls a model: hr -> {"boxes": (B, K, 6)} rows of x0, y0,
    x1, y1, score, class index, NaN-padded to the head's most boxes per image."""

    def __init__(self, task):
        super().__init__()
        self.task = task
        self.normalisation = task.normalisation
        self.most = task.head.roi_heads.detections_per_img

    def forward(self, hr: Tensor, latlon: Tensor | None = None, **_) -> dict[str, Tensor]:
        found = self.task(hr)
        out = hr.new_full((len(found), self.most, 6), float("nan"), dtype=torch.float32)
        for i, d in enumerate(found):
            n = len(d["scores"])
            out[i, :n, :4], out[i, :n, 4], out[i, :n, 5] = d["boxes"].float(), d["scores"].float(), d["labels"].float()
        return {"boxes": out}


def _core(start: int, tile: int, overlap: int, size: int) -> tuple[int, int]:
    """The part [a, b) of a tile at ``start`` that it answers for."""
    a = start + overlap // 2 if start > 0 else 0
    b = start + tile - overlap // 2 if start + tile < size else size
    return a, b


@contextlib.contextmanager
def _score_threshold(roi_heads, value: float):
    """The head's own score threshold set for a run (it drops the boxes below before NMS)."""
    trained, roi_heads.score_thresh = roi_heads.score_thresh, value
    try:
        yield
    finally:
        roi_heads.score_thresh = trained


def detect_scene(task, src: str | os.PathLike, *, tile: int = 512, overlap: int = 128, batch_size: int = 2,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, progress: bool = False,
                 hr_scale: str | None = None, score_threshold: float = 0.05, nms_threshold: float = 0.5) -> dict:
    """The detections of an HR GeoTIFF: {"boxes": (N, 4) float64 xyxy scene pixels, "scores",
    "labels" (class indices), "crs", "transform"}, by score, highest first."""
    if task.spec.kind != "detection":
        raise InputError(f"detect_scene: the task is {task.spec.kind}; boxes need a detection task")
    if tile % SCALE or overlap % SCALE or not (0 <= overlap < tile):
        raise InputError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {SCALE} with 0 <= overlap < tile")
    if not 0 <= score_threshold <= 1 or not 0 < nms_threshold <= 1:
        raise InputError(f"score_threshold must be in [0, 1] and nms_threshold in (0, 1], got {score_threshold}, "
                         f"{nms_threshold}")
    model = _Boxes(task.eval().to(device))
    found: dict[tuple[int, int], np.ndarray] = {}
    with open_raster(src, bands=3) as ds, _score_threshold(task.head.roi_heads, score_threshold):
        H, W = ds.height, ds.width
        rows, cols = tile_starts(H, tile, tile - overlap), tile_starts(W, tile, tile - overlap)
        tiles = [(r, c) for r in rows for c in cols]
        scale = hr_scaler(ds, hr_scale if hr_scale is not None else task.spec.hr_scale)
        with bar(len(tiles), "detect", "tile", progress) as shown:
            for (r, c), rows_, valid in run_tiles(model, ds, tiles, tile, batch_size, device, dtype,
                                                  torch.zeros(1, 2), "boxes", ds.nodata, series=None, scale=scale,
                                                  out_scale=1):
                shown.update(1)
                d = rows_[np.isfinite(rows_[:, 4]) & (rows_[:, 4] >= score_threshold)].astype(np.float64)
                cx, cy = (d[:, 0] + d[:, 2]) / 2, (d[:, 1] + d[:, 3]) / 2
                (y0, y1), (x0, x1) = _core(r, tile, overlap, H), _core(c, tile, overlap, W)
                keep = (cx + c >= x0) & (cx + c < x1) & (cy + r >= y0) & (cy + r < y1)
                if valid is not None:   # a box centred on nodata is no detection
                    iy = np.clip(cy.astype(int), 0, valid.shape[0] - 1)
                    ix = np.clip(cx.astype(int), 0, valid.shape[1] - 1)
                    keep &= valid[iy, ix] > 0
                d = d[keep]
                d[:, [0, 2]] += c
                d[:, [1, 3]] += r
                found[r // (tile - overlap), c // (tile - overlap)] = d   # the tile's place in the grid
        crs, transform = ds.crs, ds.transform
    every = np.concatenate([_between_neighbours(found, at, nms_threshold) for at in sorted(found)]) if found \
        else np.zeros((0, 6))
    every = every[np.argsort(-every[:, 4], kind="stable")]
    return {"boxes": every[:, :4], "scores": every[:, 4], "labels": every[:, 5].astype(np.int64),
            "crs": crs, "transform": transform, "tiles": len(tiles)}


def _between_neighbours(found: dict[tuple[int, int], np.ndarray], at: tuple[int, int], iou: float) -> np.ndarray:
    """The boxes of tile ``at`` that no box of its class in one of the eight neighbouring tiles
    overlaps by more than ``iou`` with a higher score (a tie: the later tile's box is dropped)."""
    from torchvision.ops import box_iou

    mine = found[at]
    drop = np.zeros(len(mine), bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            other = found.get((at[0] + di, at[1] + dj))
            if (di, dj) == (0, 0) or other is None or not len(other) or not len(mine):
                continue
            overlap = box_iou(torch.from_numpy(mine[:, :4]), torch.from_numpy(other[:, :4])).numpy() > iou
            same = mine[:, 5:6] == other[None, :, 5]
            better = (other[None, :, 4] > mine[:, 4:5]) | ((other[None, :, 4] == mine[:, 4:5]) & ((di, dj) < (0, 0)))
            drop |= (overlap & same & better).any(1)
    return mine[~drop]


def write_boxes(path: str, found: dict, classes) -> None:
    """The detections as a GeoPackage layer of polygons in the scene's CRS (atomically), with
    ``class`` (the task's class value), ``class_name`` and ``score``."""
    import pyogrio
    import shapely

    t = found["transform"]
    b = found["boxes"]
    corners = [(b[:, 0], b[:, 1]), (b[:, 2], b[:, 1]), (b[:, 2], b[:, 3]), (b[:, 0], b[:, 3]), (b[:, 0], b[:, 1])]
    ring = np.stack([np.stack(t * (x, y), -1) for x, y in corners], 1)   # (N, 5, 2) in the CRS
    geoms = shapely.to_wkb(shapely.polygons(ring)) if len(b) else np.zeros(0, object)
    values = np.asarray(classes.values, np.int64)[found["labels"]] if len(b) else np.zeros(0, np.int64)
    names = np.array([classes.class_names()[i] for i in found["labels"]], object)
    with replacing(path, suffix=".gpkg") as tmp:
        os.remove(tmp)   # GDAL makes the GeoPackage itself
        pyogrio.raw.write(tmp, geoms, [values, names, found["scores"].astype(np.float64)],
                          ["class", "class_name", "score"], layer=LAYER, driver="GPKG", crs=found["crs"].to_wkt(),
                          geometry_type="Polygon")


def predict_boxes(task, src: str | os.PathLike, dst: str | os.PathLike, **kw) -> dict:
    """Write the detections of ``src`` to ``dst`` (a .gpkg) with :func:`write_boxes`; ``kw``:
    those of :func:`detect_scene`. Returns a summary (tiles, boxes, per class)."""
    dst = os.fspath(dst)
    if not dst.lower().endswith(".gpkg"):
        raise InputError(f"predict: a detection task writes a GeoPackage of boxes: the output must end in .gpkg, "
                         f"got {dst}")
    refuse_to_overwrite_an_input(dst, [os.fspath(src), *task.source_files])
    found = detect_scene(task, src, **kw)
    write_boxes(dst, found, task.spec.classes)
    per = np.bincount(found["labels"], minlength=task.spec.classes.num_classes)
    return {"tiles": found["tiles"], "boxes": int(len(found["scores"])),
            "per_class": {n: int(k) for n, k in zip(task.spec.classes.class_names(), per, strict=True)},
            "layer": LAYER, "crs": str(found["crs"])}
