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

import math
import os
from collections.abc import Iterator

import numpy as np
import torch

from ..data.geotiff import normalise_hr, open_raster, scene_latlon

SCALE = 32  # image pixels per feature pixel (the HR stage-3 grid)


def _starts(size: int, tile: int, stride: int) -> list[int]:
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
                gdal_cache_mb: int = 16, prefetch: bool = True, s2=None, s1=None) -> dict:
    """Embed an HR GeoTIFF into a feature GeoTIFF (one pixel per 32 input pixels).

    Args:
        model: a :class:`~skysense_fast.models.SkySense` (its HR branch, fusion and geo-context).
        src: RGB GeoTIFF (0-255 values), any size (edges are zero-padded to whole tiles).
        dst: output path; written atomically.
        tile, overlap: tile size and overlap in image pixels, multiples of 32.
        output: "fused" (the fusion width) or "geo" (fused + geo-context, twice the width).
        prefetch: read the next batch of tiles while the model runs (overlapped I/O).
        s2, s1: optional Sentinel-2 / Sentinel-1 series (a folder of GeoTIFFs with dates in the
            file names, or a list of :class:`~skysense_fast.data.series.Acquisition`); each tile's
            area is resampled onto its fusion grid (any CRS / resolution), acquisitions with
            less than half their pixels valid there are masked.
        gdal_cache_mb: GDAL's block cache for this run (its default, 5% of RAM, would grow
            with the scene: each block is read about once here, so a small cache loses nothing).

    Returns: a summary (tiles, output shape, feature bands).
    """
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    if tile % SCALE or overlap % SCALE or not (0 <= overlap < tile):
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {SCALE} with 0 <= overlap < tile")
    if output not in ("fused", "geo"):
        raise ValueError(f"output must be 'fused' or 'geo', got {output!r}")
    dst = os.fspath(dst)
    model = model.eval().to(device)
    series = {k: _as_series(v) for k, v in (("s2", s2), ("s1", s1))}
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb * 2**20), open_raster(src, bands=3) as ds:
        H, W = ds.height, ds.width
        oh, ow = math.ceil(H / SCALE), math.ceil(W / SCALE)
        latlon = torch.tensor([scene_latlon(ds)], dtype=torch.float32)
        t = tile // SCALE
        stride = tile - overlap
        rows, cols = _starts(H, tile, stride), _starts(W, tile, stride)
        nodata = ds.nodata
        profile = dict(driver="GTiff", height=oh, width=ow, crs=ds.crs,
                       transform=ds.transform * Affine.scale(SCALE, SCALE), dtype="float32", tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
        tmp = dst + ".partial"
        written = 0
        try:
            out = None
            acc = wsum = None
            band_top = 0  # output row of acc[0]
            for r in rows:
                tiles = [(r, c) for c in cols]
                feats = list(_run_tiles(model, ds, tiles, tile, batch_size, device, dtype, latlon, output, nodata,
                                        prefetch, series))
                C = feats[0][1].shape[0]
                if out is None:
                    out = rasterio.open(tmp, "w", count=C, **profile)
                    for i in range(C):
                        out.set_band_description(i + 1, f"skysense_{output}_{i}")
                    acc = np.zeros((C, 2 * t + 1, ow), np.float32)
                    wsum = np.zeros((2 * t + 1, ow), np.float32)
                r0 = r // SCALE
                for (_, c), f in feats:
                    c0 = c // SCALE
                    fh, fw = min(f.shape[1], oh - r0), min(f.shape[2], ow - c0)
                    wgt = np.outer(_weight(f.shape[1])[:fh], _weight(f.shape[2])[:fw])
                    y0 = r0 - band_top
                    acc[:, y0:y0 + fh, c0:c0 + fw] += f[:, :fh, :fw] * wgt
                    wsum[y0:y0 + fh, c0:c0 + fw] += wgt
                # rows above the next tile row are final
                next_top = (r + stride) // SCALE if r != rows[-1] else oh
                done = min(next_top, oh) - band_top
                if done > 0:
                    block = acc[:, :done] / np.maximum(wsum[:done], 1e-12)
                    out.write(block.astype(np.float32), window=Window(0, band_top, ow, done))
                    written += done
                    acc = np.concatenate([acc[:, done:], np.zeros((C, done, ow), np.float32)], 1)
                    wsum = np.concatenate([wsum[done:], np.zeros((done, ow), np.float32)], 0)
                    band_top += done
                _release_freed_memory()
                if progress:
                    print(f"  rows {band_top}/{oh}", flush=True)
            out.close()
            os.replace(tmp, dst)
        except BaseException:
            if out is not None and not out.closed:
                out.close()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return {"tiles": len(rows) * len(cols), "shape": (C, oh, ow), "rows_written": written}


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


def _as_series(v):
    """None, a list of Acquisitions, or what find_series takes (a folder, a list of files)."""
    from ..data.series import Acquisition, find_series

    if v is None or (isinstance(v, list) and v and isinstance(v[0], Acquisition)):
        return v
    return find_series(v)


def _run_tiles(model, ds, tiles, tile, batch_size, device, dtype, latlon, output, nodata, prefetch=True,
               series=None) -> Iterator:
    """Features of each tile. Tiles at the scene's edge are read at their true size (the model
    pads internally, exactly as on a whole image) and batched with tiles of the same size.
    With prefetch, the next batch is read (and decoded) in a background thread while the model
    runs the current one; only that thread touches the input dataset meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from rasterio.windows import Window

    H, W = ds.height, ds.width
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in tiles:
        by_size.setdefault((min(tile, H - r), min(tile, W - c)), []).append((r, c))
    batches = [(h, w, group[i:i + batch_size]) for (h, w), group in by_size.items()
               for i in range(0, len(group), batch_size)]

    from rasterio.transform import Affine

    from ..data.series import read_on_grid

    series = {k: v for k, v in (series or {}).items() if v}

    def read(batch):
        h, w, chunk = batch
        arr, extra = [], {k: ([], []) for k in series}
        grid = (math.ceil(h / SCALE), math.ceil(w / SCALE))
        for r, c in chunk:
            a = ds.read([1, 2, 3], window=Window(c, r, w, h))
            x = normalise_hr(a)
            if nodata is not None:  # nodata pixels become zero features, like padding
                x = np.where((a == nodata).any(0, keepdims=True), 0.0, x).astype(np.float32)
            arr.append(x)
            tile_grid = ds.transform * Affine.translation(c, r) * Affine.scale(SCALE, SCALE)
            for k, acq in series.items():
                xs, ok = read_on_grid(acq, 10 if k == "s2" else 2, ds.crs, tile_grid, grid, k)
                extra[k][0].append(xs)
                extra[k][1].append(ok)
        kw = {}
        for k, acq in series.items():
            kw[k] = torch.from_numpy(np.stack(extra[k][0]))
            kw[f"valid_{k}"] = torch.from_numpy(np.stack(extra[k][1]))
            kw[f"doy_{k}"] = torch.tensor([[a.doy for a in acq]] * len(chunk))
        return chunk, torch.from_numpy(np.stack(arr)), kw

    dev_type = torch.device(device).type
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, batches[0]) if prefetch else None
        for i, batch in enumerate(batches):
            chunk, x, kw = pending.result() if prefetch else read(batch)
            if prefetch and i + 1 < len(batches):
                pending = pool.submit(read, batches[i + 1])
            with torch.no_grad(), torch.autocast(dev_type, dtype=dtype, enabled=dtype != torch.float32):
                res = model(hr=x.to(device), latlon=latlon.expand(len(chunk), 2).to(device),
                            **{k: v.to(device) for k, v in kw.items()})
            yield from zip(chunk, res[output].float().cpu().numpy())
