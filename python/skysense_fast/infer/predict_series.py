"""The class map of a task on Sentinel series alone (temporal crop mapping): windows of a grid
(a raster whose pixels are the ones predicted, e.g. the label raster or any 10 m raster of
the area), each series read onto each window, the task's probabilities blended with cosine
weights where windows overlap, rows of windows streamed into the class-map COG (one row of
windows in memory), or resumable pieces over torchrun's ranks. Pixels no acquisition holds
valid data for are nodata."""

from __future__ import annotations

import os

import numpy as np
import torch

from .. import distributed
from ..data.geotiff import open_raster
from ..data.series import BAND_COUNT, check_coverage, read_pixels_on_grid, series_files, series_manifest
from ..errors import InputError
from ..progress import bar
from .class_map import ClassMapSink
from .runner import model_fingerprint, refuse_to_overwrite_an_input, run_in_pieces, stream
from .tiler import blend_weight


def _starts(n: int, tile: int, stride: int) -> list[int]:
    """Window origins over n pixels: every ``stride``, the last one ending at the edge (a full
    window where the grid allows it: no sliver deciding the last pixels with little context)."""
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return starts


class _SeriesRows:
    """``rows(y0, y1, sink)`` as the tile runner's: finished rows of blended probabilities."""

    def __init__(self, task, grid, series: dict, tile: int, overlap: int, batch_size: int, device, dtype,
                 progress: bool):
        self.task, self.grid, self.series = task, grid, series
        self.tile, self.stride, self.batch_size = tile, tile - overlap, batch_size
        self.device, self.dtype, self.progress = device, dtype, progress
        self.rows_all = _starts(grid.height, tile, self.stride)
        self.cols = _starts(grid.width, tile, self.stride)
        self.tiles_run = 0

    def _probs(self, windows: list[tuple[int, int, int, int]]) -> list[tuple[np.ndarray, np.ndarray, bool]]:
        """(probabilities (C, h, w), pixels some valid acquisition holds (h, w), whether any
        acquisition is valid on the window) of each window (r, c, h, w)."""
        from rasterio.transform import Affine

        stats = self.task.normalisation
        out = []
        for i in range(0, len(windows), self.batch_size):
            chunk = windows[i:i + self.batch_size]
            h, w = chunk[0][2], chunk[0][3]
            kw: dict[str, list] = {}
            valid, usable = [], []
            for r, c, _, _ in chunk:
                cells = self.grid.transform @ Affine.translation(c, r)
                seen = np.zeros((h, w), bool)
                any_ok = False
                for kind, acq in self.series.items():
                    xs, ok, px = read_pixels_on_grid(acq, BAND_COUNT[kind], self.grid.crs, cells, (h, w), kind,
                                                     stats=stats)
                    kw.setdefault(kind, []).append(torch.from_numpy(xs))
                    kw.setdefault(f"valid_{kind}", []).append(torch.from_numpy(ok))
                    kw.setdefault(f"doy_{kind}", []).append(torch.tensor([a.doy for a in acq]))
                    seen |= px[ok].any(0) if ok.any() else False
                    any_ok |= bool(ok.any())
                valid.append(seen)
                usable.append(any_ok)
            batch = {k: torch.stack(v).to(self.device) for k, v in kw.items()}
            dev = torch.device(self.device).type
            with torch.no_grad(), torch.autocast(dev, dtype=self.dtype, enabled=self.dtype != torch.float32):
                p = self.task(**batch).float().softmax(1).cpu().numpy()
            out += list(zip(p, valid, usable, strict=True))
            self.tiles_run += len(chunk)
        return out

    def rows(self, y0: int, y1: int, sink) -> None:
        H, W, t = self.grid.height, self.grid.width, self.tile
        needed = [r for r in self.rows_all if r < y1 and r + t > y0]
        C = len(self.task.spec.class_values)
        acc = np.zeros((C, 2 * t, W), np.float32)
        wsum = np.zeros((2 * t, W), np.float32)
        seen = np.zeros((2 * t, W), bool)
        top = needed[0]
        progress = bar(len(needed) * len(self.cols), "windows", "window", self.progress)
        try:
            for i, r in enumerate(needed):
                h = min(t, H - r)
                by_width: dict[int, list] = {}
                for c in self.cols:
                    by_width.setdefault(min(t, W - c), []).append((r, c, h, min(t, W - c)))
                for group in by_width.values():
                    for (_, c, gh, gw), (p, ok, usable) in zip(group, self._probs(group), strict=True):
                        if not usable:   # no acquisition valid on this window: its guess counts nowhere
                            continue
                        wgt = np.outer(blend_weight(gh), blend_weight(gw))
                        yy = r - top
                        acc[:, yy:yy + gh, c:c + gw] += p[:, :gh, :gw] * wgt
                        wsum[yy:yy + gh, c:c + gw] += wgt
                        seen[yy:yy + gh, c:c + gw] |= ok[:gh, :gw]
                progress.update(len(self.cols))
                done = (needed[i + 1] if i + 1 < len(needed) else H) - top
                lo, hi = max(top, y0), min(top + done, y1)
                if hi > lo:
                    block = acc[:, lo - top:hi - top] / np.maximum(wsum[lo - top:hi - top], 1e-12)
                    block[:, ~seen[lo - top:hi - top]] = np.nan        # no valid acquisition: nodata
                    sink.write(lo, block.astype(np.float32))
                acc = np.concatenate([acc[:, done:], np.zeros((C, done, W), np.float32)], 1)
                wsum = np.concatenate([wsum[done:], np.zeros((done, W), np.float32)], 0)
                seen = np.concatenate([seen[done:], np.zeros((done, W), bool)], 0)
                top += done
        finally:
            progress.close()


def predict_series_scene(task, grid: str | os.PathLike, dst: str | os.PathLike, *, series: dict, tile: int = 64,
                         overlap: int = 16, batch_size: int = 4, device="cpu", dtype=torch.float32,
                         progress: bool = False, probabilities: str | None = None, resume: bool = False,
                         chunk_rows: int = 256, distribute: bool = True) -> dict:
    """The class map of a temporal task on ``grid``'s pixels (``series``: the acquisitions by
    kind, as :func:`~skysense_fast.data.series.series_input` gives them). With ``resume`` or
    under torchrun (``distribute``) the rows are made as resumable pieces of ``chunk_rows`` spread
    over the ranks and joined by rank 0, as the HR tasks' maps (:func:`.runner.run_in_pieces`)."""
    if tile < 8 or not 0 <= overlap < tile:
        raise InputError(f"tile ({tile}) must be >= 8 grid pixels and 0 <= overlap ({overlap}) < tile")
    given = tuple(k for k, v in series.items() if v)
    if set(given) != set(task.spec.inputs):
        raise InputError(f"predict: the task was trained on {', '.join(task.spec.inputs)}: give exactly "
                         f"{', '.join('--' + k for k in task.spec.inputs)}")
    series = {k: series[k] for k in given}
    dst = os.fspath(dst)
    inputs = [grid, *task.source_files] + [f for files in series_files(series).values() for f in files]
    for out in filter(None, (dst, probabilities)):
        refuse_to_overwrite_an_input(out, inputs)
    task = task.eval().to(device)
    with open_raster(grid, what="the grid") as g:
        for kind, acq in series.items():
            check_coverage(acq, g.crs, g.bounds, kind)
        profile = dict(driver="GTiff", height=g.height, width=g.width, crs=g.crs, transform=g.transform, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
        run = _SeriesRows(task, g, series, tile, overlap, batch_size, device, dtype, progress)

        def sink(path: str) -> ClassMapSink:
            return ClassMapSink(path, profile, task.spec.classes, probabilities)

        rank, world = distributed.init() if distribute else (0, 1)
        if world == 1 and not resume:
            stream(run, sink(dst + ".partial"), 0, g.height, dst)
        else:
            run_in_pieces(run, dst, dict(profile, dtype="float32", nodata=float("nan")), "probs", chunk_rows, resume,
                          rank, world, final_sink=sink,
                          manifest={"src": os.path.abspath(os.fspath(grid)), "tile": tile, "overlap": overlap,
                                    "output": "class_map", "shape": [g.height, g.width], "chunk_rows": chunk_rows,
                                    "model": model_fingerprint(task), "dtype": str(dtype),
                                    "series": series_manifest(series)})
        return {"tiles": run.tiles_run, "shape": (1, g.height, g.width), "classes": list(task.spec.class_values)}
