"""Tiled, streaming SkySense inference over an HR scene of any size.

The scene is read in tiles of ``tile`` pixels overlapping by ``overlap``, batched through the
model, and each tile's fused feature map (one feature pixel per 32 image pixels) is blended
into the output with a cosine (Hann) weight so that no seams appear. Tiles go row by row;
only one band of output rows (a tile's height) is held, and finished rows are written to a
tiled, compressed GeoTIFF as soon as no later tile touches them, so memory is bounded by
the tile row, not the scene. The file is written under a temporary name and renamed when
complete: an interrupted run leaves no partial output at the final path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator

import numpy as np
import torch

from ..data.geotiff import hr_scaler, may_hold_nodata, nodata_mask, normalise_hr, open_raster, scene_latlon
from ..data.normalisation import of as normalisation_of
from ..data.series import check_coverage
from ..errors import InputError

SCALE = 32  # image pixels per feature pixel (the HR stage-3 grid)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins on the 32-pixel grid (stride is a multiple of 32); the last tile may be
    cut short by the edge."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + stride)
    return starts


def _weight(n: int) -> np.ndarray:
    """Cosine blending weight over n feature pixels, never exactly 0 (edges still count)."""
    w = np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2
    return np.maximum(w, 1e-3).astype(np.float32)


def embed_scene(model: torch.nn.Module, src: str | os.PathLike, dst: str | os.PathLike, *, tile: int = 256,
                overlap: int = 64, batch_size: int = 4, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, output: str = "fused", progress: bool = False,
                gdal_cache_mb: int = 16, prefetch: bool = True, s2=None, s1=None, s2_dates=None, s1_dates=None,
                resume: bool = False, chunk_rows: int = 64, hr_scale: str | None = None,
                s2_band_order: str = "model") -> dict:
    """Embed an HR GeoTIFF into a feature GeoTIFF (one pixel per 32 input pixels).

    Args:
        model: a :class:`~skysense_fast.models.SkySense` (its HR branch, fusion and geo-context).
        src: RGB GeoTIFF, any size (edges are zero-padded to whole tiles): 8-bit, or any
            other dtype with ``hr_scale``.
        s2_band_order: "model" (B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 as stored) or
            "official" (B8 stored fourth, as the official SkySense S2 files are); band names in
            the files' descriptions decide where every band has one.
        hr_scale: how values that are not 8-bit become 0-255: ``"max=VALUE"`` or
            ``"percentile=LO,HI"`` (see :func:`~skysense_fast.data.geotiff.hr_scaler`); a raster
            that is not 8-bit without it is refused, never guessed.
        dst: output path; written atomically.
        tile, overlap: tile size and overlap in image pixels, multiples of 32.
        output: "fused" (the fusion width) or "geo" (fused + geo-context, twice the width).
        prefetch: read the next batch of tiles while the model runs (overlapped I/O).
        s2, s1: optional Sentinel-2 / Sentinel-1 series (a folder of GeoTIFFs with dates in the
            file names or tags, one multi-band GeoTIFF holding the whole series, or a list of
            :class:`~skysense_fast.data.series.Acquisition`); each tile's area is resampled
            onto its fusion grid (any CRS / resolution); nodata and cloud-mask pixels are
            invalid, and acquisitions with less than half their pixels valid there are masked.
        s2_dates, s1_dates: explicit acquisition dates (YYYY-MM-DD or ``datetime.date``), one
            per file or per acquisition of a series file.
        gdal_cache_mb: GDAL's block cache for this run (its default, 5% of RAM, would grow
            with the scene: each block is read about once here, so a small cache loses nothing).
        resume: keep finished pieces in ``<dst>.parts/`` (bands of ``chunk_rows`` output rows,
            each a GeoTIFF renamed into place when complete) and skip the ones already there,
            so an interrupted run continues where it stopped; the pieces are joined into
            ``dst`` at the end and removed.
        chunk_rows: output rows per piece (resumable and multi-process runs).

    Under ``torchrun`` (torch.distributed initialised, or WORLD_SIZE > 1: a gloo group is
    started for the barriers) the ranks take contiguous ranges of pieces, and rank 0 joins
    them into one output: the result equals a single process's.

    Returns: a summary (tiles run by this process, output shape, rows written).
    """
    import rasterio
    from rasterio.transform import Affine

    if tile % SCALE or overlap % SCALE or not (0 <= overlap < tile):
        raise InputError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {SCALE} with 0 <= overlap < tile")
    if output not in ("fused", "geo"):
        raise InputError(f"output must be 'fused' or 'geo', got {output!r}")
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    dst = os.fspath(dst)
    rank, world = _distributed()
    model = model.eval().to(device)
    series = {"s2": _as_series(s2, s2_dates, 10), "s1": _as_series(s1, s1_dates, 2)}
    if s2_band_order not in ("model", "official"):
        raise InputError(f"s2_band_order must be 'model' or 'official', got {s2_band_order!r}")
    if s2_band_order == "official" and series["s2"]:
        from ..data.series import OFFICIAL_S2_ORDER

        series["s2"] = [dataclasses.replace(a, band_order=OFFICIAL_S2_ORDER) for a in series["s2"]]
    _refuse_to_overwrite_an_input(dst, [src] + [a.path for acq in series.values() if acq for a in acq])
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb * 2**20), open_raster(src, bands=3) as ds:
        H, W = ds.height, ds.width
        for kind, acq in series.items():
            if acq:
                check_coverage(acq, ds.crs, ds.bounds, kind)
        oh, ow = math.ceil(H / SCALE), math.ceil(W / SCALE)
        profile = dict(driver="GTiff", height=oh, width=ow, crs=ds.crs,
                       transform=ds.transform @ Affine.scale(SCALE, SCALE), dtype="float32", tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER",
                       nodata=float("nan") if may_hold_nodata(ds) else None)
        scale = hr_scaler(ds, hr_scale)
        run = _Run(model, ds, tile, overlap, batch_size, device, dtype, output, prefetch, series, progress, oh, scale)
        if world == 1 and not resume:
            sink = _FileSink(dst + ".partial", profile, output)
            try:
                run.rows(0, oh, sink)
                sink.finish(dst)
            except BaseException:
                sink.abort()
                raise
            C = sink.bands
        else:
            C = _embed_in_pieces(run, dst, profile, output, chunk_rows, resume, rank, world,
                                 manifest={"src": os.path.abspath(os.fspath(src)), "tile": tile, "overlap": overlap,
                                           "output": output, "shape": [oh, ow], "chunk_rows": chunk_rows,
                                           "series": {k: [a.path for a in v] for k, v in series.items() if v},
                                           "model": _model_fingerprint(model), "dtype": str(dtype),
                                           "hr_scale": hr_scale})
    return {"tiles": run.tiles_run, "shape": (C, oh, ow), "rows_written": run.rows_written}


def _model_fingerprint(model: torch.nn.Module) -> str:
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


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")  # barriers only: the pieces go through the file system
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


class _Run:
    """Streams the tile rows that cover output rows [y0, y1) and hands finished rows to a sink."""

    def __init__(self, model, ds, tile, overlap, batch_size, device, dtype, output, prefetch, series, progress, oh,
                 scale=None):
        self.model, self.ds, self.tile, self.batch_size, self.scale = model, ds, tile, batch_size, scale
        self.device, self.dtype, self.output, self.prefetch, self.series = device, dtype, output, prefetch, series
        self.progress, self.oh = progress, oh
        self.t_start = None
        self.stride = tile - overlap
        self.t = tile // SCALE
        self.all_rows = tile_starts(ds.height, tile, self.stride)
        self.cols = tile_starts(ds.width, tile, self.stride)
        self.latlon = torch.tensor([scene_latlon(ds)], dtype=torch.float32)
        self.tiles_run = self.rows_written = 0

    def rows(self, y0: int, y1: int, sink) -> None:
        t, oh, ow = self.t, self.oh, math.ceil(self.ds.width / SCALE)
        needed = [r for r in self.all_rows if r // SCALE < y1 and r // SCALE + t > y0]
        self.t_start = time.perf_counter()
        acc = wsum = vfrac = None
        band_top = needed[0] // SCALE  # output row of acc[0]
        for i, r in enumerate(needed):
            tiles = [(r, c) for c in self.cols]
            feats = list(_run_tiles(self.model, self.ds, tiles, self.tile, self.batch_size, self.device, self.dtype,
                                    self.latlon, self.output, self.ds.nodata, self.prefetch, self.series,
                                    self.scale))
            self.tiles_run += len(tiles)
            C = feats[0][1].shape[0]
            if acc is None:
                acc = np.zeros((C, 2 * t + 1, ow), np.float32)
                wsum = np.zeros((2 * t + 1, ow), np.float32)
                vfrac = np.ones((2 * t + 1, ow), np.float32)   # valid input fraction per output pixel
            r0 = r // SCALE
            for (_, c), f, frac in feats:
                c0 = c // SCALE
                fh, fw = min(f.shape[1], oh - r0), min(f.shape[2], ow - c0)
                wgt = np.outer(_weight(f.shape[1])[:fh], _weight(f.shape[2])[:fw])
                yy = r0 - band_top
                acc[:, yy:yy + fh, c0:c0 + fw] += f[:, :fh, :fw] * wgt
                wsum[yy:yy + fh, c0:c0 + fw] += wgt
                if frac is not None:  # the same for every tile covering a cell: assign
                    vfrac[yy:yy + fh, c0:c0 + fw] = frac[:fh, :fw]
            # rows above the next tile row are final (no later tile touches them)
            next_top = needed[i + 1] // SCALE if i + 1 < len(needed) else oh
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
            _release_freed_memory()
            if self.progress:
                self._report(i + 1, len(needed))


    def _report(self, done: int, total: int) -> None:
        """A one-line progress bar on stderr: tile rows done, tiles/s, time left."""
        import sys

        now = time.perf_counter()
        rate = done * len(self.cols) / (now - self.t_start)
        left = (total - done) * len(self.cols) / max(rate, 1e-9)
        bar = "#" * int(30 * done / total)
        end = "\n" if done == total else ""
        print(f"\r[{bar:<30}] tile rows {done}/{total}, {rate:.1f} tiles/s, {left:.0f} s left", end=end,
              file=sys.stderr, flush=True)


class _FileSink:
    """Rows into one GeoTIFF, opened at the first write (when the band count is known)."""

    def __init__(self, path: str, profile: dict, output: str, top: int = 0):
        self.path, self.profile, self.output, self.top = path, profile, output, top
        self.out = None
        self.bands = 0

    def write(self, y: int, block: np.ndarray) -> None:
        from rasterio.windows import Window

        if self.out is None:
            import rasterio

            self.bands = block.shape[0]
            self.out = rasterio.open(self.path, "w", count=self.bands, **self.profile)
            for i in range(self.bands):
                self.out.set_band_description(i + 1, f"skysense_{self.output}_{i}")
        self.out.write(block, window=Window(0, y - self.top, block.shape[2], block.shape[1]))

    def finish(self, final: str) -> None:
        self.out.close()
        os.replace(self.path, final)

    def abort(self) -> None:
        if self.out is not None and not self.out.closed:
            self.out.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def _piece_name(y0: int, y1: int) -> str:
    return f"rows_{y0:07d}_{y1:07d}.tif"


class _PiecesSink:
    """Rows into pieces of ``chunk_rows`` rows; a piece is renamed into place once complete."""

    def __init__(self, folder: str, pieces: list[tuple[int, int]], profile: dict, output: str):
        self.folder, self.pieces, self.profile, self.output = folder, pieces, profile, output
        self.open: dict[int, tuple[_FileSink, int]] = {}   # piece index -> (sink, rows written)

    def write(self, y: int, block: np.ndarray) -> None:
        from rasterio.transform import Affine

        for i, (p0, p1) in enumerate(self.pieces):
            lo, hi = max(y, p0), min(y + block.shape[1], p1)
            if hi <= lo:
                continue
            if i not in self.open:
                prof = dict(self.profile, height=p1 - p0,
                            transform=self.profile["transform"] @ Affine.translation(0, p0))
                self.open[i] = (_FileSink(os.path.join(self.folder, _piece_name(p0, p1) + ".partial"), prof,
                                          self.output, top=p0), 0)
            sink, n = self.open[i]
            sink.write(lo, block[:, lo - y:hi - y])
            n += hi - lo
            self.open[i] = (sink, n)
            if n == p1 - p0:
                sink.finish(os.path.join(self.folder, _piece_name(p0, p1)))
                del self.open[i]

    def abort(self) -> None:
        for sink, _ in self.open.values():
            sink.abort()


def _embed_in_pieces(run: _Run, dst: str, profile: dict, output: str, chunk_rows: int, resume: bool, rank: int,
                     world: int, manifest: dict) -> int:
    import json
    import shutil

    folder = dst + ".parts"
    oh = profile["height"]
    pieces = [(y, min(y + chunk_rows, oh)) for y in range(0, oh, chunk_rows)]
    if rank == 0:
        mpath = os.path.join(folder, "manifest.json")
        if os.path.exists(mpath) and resume:
            with open(mpath) as f:
                old = json.load(f)
            if old != manifest:
                diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise InputError(f"{folder} holds pieces of another run (it differs in {', '.join(diff)}: other "
                                 "weights, input, dtype or tiling); remove it to start over")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            with open(mpath + ".tmp", "w") as f:
                json.dump(manifest, f)
            os.replace(mpath + ".tmp", mpath)
    _barrier(world)
    mine = pieces[rank * len(pieces) // world:(rank + 1) * len(pieces) // world]
    todo = [p for p in mine if not os.path.exists(os.path.join(folder, _piece_name(*p)))]
    # consecutive pending pieces stream together: tile rows are shared, never run twice
    runs: list[list[tuple[int, int]]] = []
    for p in todo:
        if runs and runs[-1][-1][1] == p[0]:
            runs[-1].append(p)
        else:
            runs.append([p])
    for group in runs:
        sink = _PiecesSink(folder, group, profile, output)
        try:
            run.rows(group[0][0], group[-1][1], sink)
        except BaseException:
            sink.abort()
            raise
    _barrier(world)
    bands = 0
    if rank == 0:
        bands = _join_pieces(folder, pieces, dst, profile, output)
        shutil.rmtree(folder, ignore_errors=True)
    _barrier(world)
    if bands == 0:
        import rasterio

        with rasterio.open(dst) as f:
            bands = f.count
    return bands


def _join_pieces(folder: str, pieces: list[tuple[int, int]], dst: str, profile: dict, output: str) -> int:
    import rasterio

    sink = _FileSink(dst + ".partial", profile, output)
    try:
        for p0, p1 in pieces:
            with rasterio.open(os.path.join(folder, _piece_name(p0, p1))) as part:
                for y in range(0, p1 - p0, 256):
                    from rasterio.windows import Window

                    h = min(256, p1 - p0 - y)
                    sink.write(p0 + y, part.read(window=Window(0, y, part.width, h)))
        sink.finish(dst)
    except BaseException:
        sink.abort()
        raise
    return sink.bands


def _release_freed_memory() -> None:
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


def _refuse_to_overwrite_an_input(dst: str, inputs) -> None:
    """The output replaces its path at the end of a run: never one of the run's inputs."""
    if not os.path.exists(dst):
        return
    for path in inputs:
        if os.path.exists(path) and os.path.samefile(path, dst):
            raise InputError(f"embed: the output {dst} is an input of this run ({os.fspath(path)}); writing it "
                             "would replace the input with its features: choose another output path")


def _as_series(v, dates=None, band_count: int = 10):
    """None, a list of Acquisitions, or what find_series takes (a folder, a list of files, one
    multi-band series file), with optional explicit dates."""
    from ..data.series import Acquisition, find_series

    if v is None or (isinstance(v, list) and v and isinstance(v[0], Acquisition)):
        return v
    return find_series(v, dates, band_count)


def _cell_fraction(valid: np.ndarray) -> np.ndarray:
    """(h, w) bool -> the valid fraction of each 32 x 32 cell (edge cells: of their pixels)."""
    h, w = valid.shape
    gh, gw = math.ceil(h / SCALE), math.ceil(w / SCALE)
    pad = np.zeros((gh * SCALE, gw * SCALE), np.float32)
    cnt = np.zeros_like(pad)
    pad[:h, :w], cnt[:h, :w] = valid, 1.0
    cells = lambda m: m.reshape(gh, SCALE, gw, SCALE).sum((1, 3))  # noqa: E731
    return cells(pad) / cells(cnt)


def _run_tiles(model, ds, tiles, tile, batch_size, device, dtype, latlon, output, nodata, prefetch=True,
               series=None, scale=None) -> Iterator:
    """Features of each tile. Tiles at the scene's edge are read at their true size (the model
    pads internally, exactly as on a whole image) and batched with tiles of the same size.
    With prefetch, the next batch is read (and decoded) in a background thread while the model
    runs the current one; only that thread touches the input dataset meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from rasterio.windows import Window

    H, W = ds.height, ds.width
    stats = normalisation_of(model)   # the statistics stored with the weights
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in tiles:
        by_size.setdefault((min(tile, H - r), min(tile, W - c)), []).append((r, c))
    batches = [(h, w, group[i:i + batch_size]) for (h, w), group in by_size.items()
               for i in range(0, len(group), batch_size)]

    from rasterio.transform import Affine

    from rasterio.errors import RasterioError

    from ..data.series import read_on_grid

    series = {k: v for k, v in (series or {}).items() if v}

    def read(batch):
        h, w, chunk = batch
        arr, fracs, extra = [], [], {k: ([], []) for k in series}
        grid = (math.ceil(h / SCALE), math.ceil(w / SCALE))
        for r, c in chunk:
            try:
                a = ds.read([1, 2, 3], window=Window(c, r, w, h))
            except RasterioError as e:  # rasterio's message names neither the file nor the place
                raise InputError(f"{ds.name}: reading pixels ({r}, {c}) to ({r + h}, {c + w}) failed ({e}); "
                                 "is the file truncated or damaged?") from None
            x = normalise_hr(a if scale is None else scale(a), stats)
            hole = nodata_mask(a, nodata)
            if hole is not None:  # nodata pixels become zero input, like padding
                x = np.where(hole[None], 0.0, x).astype(np.float32)
                fracs.append(_cell_fraction(~hole))
            else:
                fracs.append(None)
            arr.append(x)
            tile_grid = ds.transform @ Affine.translation(c, r) @ Affine.scale(SCALE, SCALE)
            for k, acq in series.items():
                xs, ok = read_on_grid(acq, 10 if k == "s2" else 2, ds.crs, tile_grid, grid, k, stats=stats)
                extra[k][0].append(xs)
                extra[k][1].append(ok)
        kw = {}
        for k, acq in series.items():
            kw[k] = torch.from_numpy(np.stack(extra[k][0]))
            kw[f"valid_{k}"] = torch.from_numpy(np.stack(extra[k][1]))
            kw[f"doy_{k}"] = torch.tensor([[a.doy for a in acq]] * len(chunk))
        return chunk, torch.from_numpy(np.stack(arr)), kw, fracs

    dev_type = torch.device(device).type
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, batches[0]) if prefetch else None
        for i, batch in enumerate(batches):
            chunk, x, kw, fracs = pending.result() if prefetch else read(batch)
            if prefetch and i + 1 < len(batches):
                pending = pool.submit(read, batches[i + 1])
            with torch.no_grad(), torch.autocast(dev_type, dtype=dtype, enabled=dtype != torch.float32):
                res = model(hr=x.to(device), latlon=latlon.expand(len(chunk), 2).to(device),
                            **{k: v.to(device) for k, v in kw.items()})
            yield from zip(chunk, res[output].float().cpu().numpy(), fracs)
