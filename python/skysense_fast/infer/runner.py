"""The runner of a tiled run: blends each row of tiles into a band of output rows (one tile row
held in memory), hands finished rows to a sink, and for resumable or multi-process runs
spreads pieces of rows over torchrun ranks with a manifest that keeps other runs' pieces out."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from .. import atomic, distributed
from ..data.geotiff import scene_latlon
from ..errors import InputError
from ..progress import bar
from .sinks import PiecesSink, join_pieces, piece_name
from .tiler import SCALE, blend_weight, run_tiles, tile_starts


@dataclass
class TileRun:
    """Streams the tile rows that cover output rows [y0, y1) and hands finished rows to a sink.

    ``output`` names the model output blended (``fused``, ``geo``); ``scale`` turns raw HR
    values into 0-255 (None: 8-bit input); ``series`` the Sentinel acquisitions by kind.
    """

    model: torch.nn.Module
    ds: Any                      # an open rasterio dataset
    tile: int
    overlap: int
    batch_size: int
    device: str | torch.device
    dtype: torch.dtype
    output: str
    oh: int                      # output rows
    prefetch: bool = True
    series: dict = field(default_factory=dict)
    progress: bool = False
    scale: Any = None
    out_scale: int = SCALE       # image pixels per output pixel: 32 (features) or 1 (class maps)

    def __post_init__(self):
        self.stride = self.tile - self.overlap
        self.t = self.tile // self.out_scale
        self.all_rows = tile_starts(self.ds.height, self.tile, self.stride)
        self.cols = tile_starts(self.ds.width, self.tile, self.stride)
        self.latlon = torch.tensor([scene_latlon(self.ds)], dtype=torch.float32)
        self.tiles_run = self.rows_written = 0

    def rows(self, y0: int, y1: int, sink) -> None:
        t, s = self.t, self.out_scale
        needed = [r for r in self.all_rows if r // s < y1 and r // s + t > y0]
        progress = bar(len(needed) * len(self.cols), "tiles", "tile", self.progress)
        try:
            self._rows(needed, y0, y1, sink, progress)
        finally:
            progress.close()

    def _rows(self, needed: list[int], y0: int, y1: int, sink, progress) -> None:
        t, oh, ow, s = self.t, self.oh, math.ceil(self.ds.width / self.out_scale), self.out_scale
        acc = wsum = vfrac = None
        band_top = needed[0] // s  # output row of acc[0]
        for i, r in enumerate(needed):
            tiles = [(r, c) for c in self.cols]
            feats = list(run_tiles(self.model, self.ds, tiles, self.tile, self.batch_size, self.device, self.dtype,
                                    self.latlon, self.output, self.ds.nodata, self.prefetch, self.series,
                                    self.scale, s))
            self.tiles_run += len(tiles)
            C = feats[0][1].shape[0]
            if acc is None:
                acc = np.zeros((C, 2 * t + 1, ow), np.float32)
                wsum = np.zeros((2 * t + 1, ow), np.float32)
                vfrac = np.ones((2 * t + 1, ow), np.float32)   # valid input fraction per output pixel
            assert wsum is not None and vfrac is not None   # allocated with acc
            r0 = r // s
            for (_, c), f, frac in feats:
                c0 = c // s
                fh, fw = min(f.shape[1], oh - r0), min(f.shape[2], ow - c0)
                wgt = np.outer(blend_weight(f.shape[1])[:fh], blend_weight(f.shape[2])[:fw])
                yy = r0 - band_top
                acc[:, yy:yy + fh, c0:c0 + fw] += f[:, :fh, :fw] * wgt
                wsum[yy:yy + fh, c0:c0 + fw] += wgt
                if frac is not None:  # the same for every tile covering a cell: assign
                    vfrac[yy:yy + fh, c0:c0 + fw] = frac[:fh, :fw]
            # rows above the next tile row are final (no later tile touches them)
            next_top = needed[i + 1] // s if i + 1 < len(needed) else oh
            done = min(next_top, oh) - band_top
            if done > 0:
                lo, hi = max(band_top, y0), min(band_top + done, y1)
                if hi > lo:
                    block = acc[:, lo - band_top:hi - band_top] / np.maximum(wsum[lo - band_top:hi - band_top], 1e-12)
                    block[:, vfrac[lo - band_top:hi - band_top] < 0.5] = np.nan   # mostly nodata input
                    sink.write(lo, block.astype(np.float32))
                    self.rows_written += hi - lo
                acc = np.concatenate([acc[:, done:], np.zeros((C, done, ow), np.float32)], 1)
                wsum = np.concatenate([wsum[done:], np.zeros((done, ow), np.float32)], 0)
                vfrac = np.concatenate([vfrac[done:], np.ones((done, ow), np.float32)], 0)
                band_top += done
            release_freed_memory()
            progress.update(len(tiles))


class Rows(Protocol):
    """What streams into a sink: the finished output rows [y0, y1), in order."""

    def rows(self, y0: int, y1: int, sink) -> None: ...


def stream(run: Rows, sink, y0: int, y1: int, final: str | None = None) -> None:
    """Rows [y0, y1) of ``run`` into ``sink``, finished as ``final`` (if given); on any failure
    the sink is aborted, so nothing partial is left behind."""
    try:
        run.rows(y0, y1, sink)
        if final is not None:
            sink.finish(final)
    except BaseException:
        sink.abort()
        raise


def run_in_pieces(run: Rows, dst: str, profile: dict, output: str, chunk_rows: int, resume: bool, rank: int,
                  world: int, manifest: dict, final_sink=None) -> int:
    """The rows of ``run`` as resumable pieces spread over the ranks, joined by rank 0 into
    ``dst`` through ``final_sink(path)`` (default: a float GeoTIFF of the blended maps)."""
    import json
    import shutil

    folder = dst + ".parts"
    oh = profile["height"]
    pieces = [(y, min(y + chunk_rows, oh)) for y in range(0, oh, chunk_rows)]
    mpath = os.path.join(folder, "manifest.json")
    if resume and os.path.exists(mpath):   # every rank checks, so all of them stop on a mismatch
        with open(mpath) as f:
            old = json.load(f)
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise InputError(f"{folder} holds pieces of another run (it differs in {', '.join(diff)}: other "
                             "weights, input, dtype or tiling); remove it to start over")
    elif rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        atomic.write_text(mpath, json.dumps(manifest))
    if world > 1:
        distributed.barrier()
    mine = pieces[rank * len(pieces) // world:(rank + 1) * len(pieces) // world]
    todo = [p for p in mine if not os.path.exists(os.path.join(folder, piece_name(*p)))]
    # consecutive pending pieces stream together: tile rows are shared, never run twice
    runs: list[list[tuple[int, int]]] = []
    for p in todo:
        if runs and runs[-1][-1][1] == p[0]:
            runs[-1].append(p)
        else:
            runs.append([p])
    for group in runs:
        stream(run, PiecesSink(folder, group, profile, output), group[0][0], group[-1][1])
    if world > 1:
        distributed.barrier()
    bands = 0
    if rank == 0:
        bands = join_pieces(folder, pieces, dst, profile, output, final_sink)
        shutil.rmtree(folder, ignore_errors=True)
    if world > 1:
        distributed.barrier()
    if bands == 0:
        import rasterio

        with rasterio.open(dst) as f:
            bands = f.count
    return bands


def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the model's config, input statistics and weights (each tensor's shape,
    dtype and sums): pieces made by other weights never join a resumed run."""
    import hashlib

    h = hashlib.sha256(repr(getattr(model, "config", None)).encode())
    h.update(repr(getattr(model, "normalisation", None)).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t = t.detach()
            sums = (float(t.double().sum()), float(t.double().abs().sum())) if t.numel() else (0.0, 0.0)
            h.update(f"{name}{tuple(t.shape)}{t.dtype}{sums}".encode())
    return h.hexdigest()


def refuse_to_overwrite_an_input(dst: str, inputs) -> None:
    """The output replaces its path at the end of a run: never one of the run's inputs."""
    if not os.path.exists(dst):
        return
    for path in inputs:
        if os.path.exists(path) and os.path.samefile(path, dst):
            raise InputError(f"the output {dst} is an input of this run ({os.fspath(path)}); writing it "
                             "would replace the input: choose another output path")


def release_freed_memory() -> None:
    """Hand freed heap back to the OS after each row of tiles: glibc keeps it otherwise and the
    process's footprint creeps with the scene's length instead of staying flat."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lib if hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()
