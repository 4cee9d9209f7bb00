"""Tiled, streaming SkySense inference over an HR scene of any size.

The scene is read in tiles of ``tile`` pixels overlapping by ``overlap``, batched through the
model, and each tile's fused feature map (one feature pixel per 32 image pixels) is blended
into the output with a cosine (Hann) weight so that no seams appear. Tiles go row by row;
only one band of output rows (a tile's height) is held, and finished rows are written to a
tiled, compressed GeoTIFF as soon as no later tile touches them, so memory is bounded by
the tile row, not the scene. The file is written under a temporary name and renamed when
complete: an interrupted run leaves no partial output at the final path. The pieces: the
tiler (:mod:`.tiler`), the sinks (:mod:`.sinks`), the runner (:mod:`.runner`).
"""

from __future__ import annotations

import math
import os

import torch

from .. import distributed
from ..data.geotiff import hr_scaler, may_hold_nodata, open_raster
from ..data.series import check_coverage, series_files, series_input, series_manifest
from ..errors import InputError
from .runner import TileRun, model_fingerprint, refuse_to_overwrite_an_input, run_in_pieces, stream
from .sinks import FileSink
from .tiler import SCALE


def embed_scene(model: torch.nn.Module, src: str | os.PathLike, dst: str | os.PathLike, *, tile: int = 256,
                overlap: int = 64, batch_size: int = 4, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, output: str = "fused", progress: bool = False,
                gdal_cache_mb: int = 16, prefetch: bool = True, s2=None, s1=None, s2_dates=None, s1_dates=None,
                resume: bool = False, chunk_rows: int = 64, hr_scale: str | None = None,
                s2_band_order: str = "model", distribute: bool = True) -> dict:
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
        distribute: under torchrun, spread this scene's pieces over the ranks (False: this
            process embeds the whole scene, as each rank does with a list of scenes).

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
    rank, world = distributed.init() if distribute else (0, 1)
    model = model.eval().to(device)
    series = {"s2": series_input(s2, s2_dates, "s2", s2_band_order), "s1": series_input(s1, s1_dates, "s1")}
    refuse_to_overwrite_an_input(dst, [src] + [f for files in series_files(series).values() for f in files])
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
        run = TileRun(model, ds, tile, overlap, batch_size, device, dtype, output, oh, prefetch=prefetch,
                      series=series, progress=progress, scale=scale)
        if world == 1 and not resume:
            sink = FileSink(dst + ".partial", profile, output)
            stream(run, sink, 0, oh, dst)
            C = sink.bands
        else:
            C = run_in_pieces(run, dst, profile, output, chunk_rows, resume, rank, world,
                                 manifest={"src": os.path.abspath(os.fspath(src)), "tile": tile, "overlap": overlap,
                                           "output": output, "shape": [oh, ow], "chunk_rows": chunk_rows,
                                           "series": series_manifest(series),
                                           "model": model_fingerprint(model), "dtype": str(dtype),
                                           "hr_scale": hr_scale})
    return {"tiles": run.tiles_run, "shape": (C, oh, ow), "rows_written": run.rows_written}
