"""The tiler: tile origins on the 32-pixel feature grid, the blending weight, and the
batched, prefetched read of tiles (HR pixels, nodata, Sentinel series on each tile's grid)
through the model. Shared by every tiled run (``embed``: features on the 32-pixel grid;
``predict``: class probabilities at the image's resolution)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ..data.geotiff import nodata_mask, normalise_hr, read_second_date
from ..data.normalisation import of as normalisation_of
from ..errors import InputError

SCALE = 32  # image pixels per feature pixel (the HR stage-3 grid)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins on the 32-pixel grid (stride is a multiple of 32); the last tile may be
    cut short by the edge."""
    starts = [0]
    while starts[-1] + tile < size:
        starts.append(starts[-1] + stride)
    return starts


def blend_weight(n: int) -> np.ndarray:
    """Cosine blending weight over n feature pixels, never exactly 0 (edges still count)."""
    w = np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2
    return np.maximum(w, 1e-3).astype(np.float32)


def cell_fraction(valid: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """(h, w) bool -> the valid fraction of each scale x scale output cell (edge cells: of their
    pixels)."""
    if scale == 1:
        return valid.astype(np.float32)
    h, w = valid.shape
    gh, gw = math.ceil(h / scale), math.ceil(w / scale)
    pad = np.zeros((gh * scale, gw * scale), np.float32)
    cnt = np.zeros_like(pad)
    pad[:h, :w], cnt[:h, :w] = valid, 1.0
    cells = lambda m: m.reshape(gh, scale, gw, scale).sum((1, 3))  # noqa: E731
    return cells(pad) / cells(cnt)


def run_tiles(model, ds, tiles, tile, batch_size, device, dtype, latlon, output, nodata, prefetch=True,
               series=None, scale=None, out_scale=SCALE) -> Iterator:
    """The model's ``output`` map of each tile (``out_scale`` image pixels per output pixel).

    Tiles at the scene's edge are read at their true size (the model pads internally, exactly
    as on a whole image) and batched with tiles of the same size.
    With prefetch, the next batch is read (and decoded) in a background thread while the model
    runs the current one; only that thread touches the input dataset meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    from rasterio.errors import RasterioError
    from rasterio.transform import Affine
    from rasterio.windows import Window

    from ..data.series import read_on_grid

    H, W = ds.height, ds.width
    stats = normalisation_of(model)   # the statistics stored with the weights
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in tiles:
        by_size.setdefault((min(tile, H - r), min(tile, W - c)), []).append((r, c))
    batches = [(h, w, group[i:i + batch_size]) for (h, w), group in by_size.items()
               for i in range(0, len(group), batch_size)]

    series = {k: v for k, v in (series or {}).items() if v}
    second = series.pop("hr2", None)   # a change task's second date: (path, its HR scaling), read onto each tile

    def read(batch):
        h, w, chunk = batch
        arr, fracs, extra = [], [], {k: ([], []) for k in series}
        dates = []
        grid = (math.ceil(h / SCALE), math.ceil(w / SCALE))
        for r, c in chunk:
            try:
                a = ds.read([1, 2, 3], window=Window(c, r, w, h))
            except RasterioError as e:  # rasterio's message names neither the file nor the place
                raise InputError(f"{ds.name}: reading pixels ({r}, {c}) to ({r + h}, {c + w}) failed ({e}); "
                                 "is the file truncated or damaged?") from None
            x = normalise_hr(a if scale is None else scale(a), stats)
            hole = nodata_mask(a, nodata)
            if second is not None:   # the second date's gaps are holes too: no change input there
                path, scale2 = second
                x2, gap = read_second_date(path, ds.crs, ds.transform @ Affine.translation(c, r), h, w, scale2, stats)
                dates.append(x2)
                hole = gap if hole is None else hole | gap
            if hole is not None:  # nodata pixels become zero input, like padding
                x = np.where(hole[None], 0.0, x).astype(np.float32)
                fracs.append(cell_fraction(~hole, out_scale))
            else:
                fracs.append(None)
            arr.append(x)
            tile_grid = ds.transform @ Affine.translation(c, r) @ Affine.scale(SCALE, SCALE)
            for k, acq in series.items():
                xs, ok = read_on_grid(acq, 10 if k == "s2" else 2, ds.crs, tile_grid, grid, k, stats=stats)
                extra[k][0].append(xs)
                extra[k][1].append(ok)
        kw = {"hr2": torch.from_numpy(np.stack(dates))} if dates else {}
        for k, acq in series.items():
            kw[k] = torch.from_numpy(np.stack(extra[k][0]))
            kw[f"valid_{k}"] = torch.from_numpy(np.stack(extra[k][1]))
            kw[f"doy_{k}"] = torch.tensor([[a.doy for a in acq]] * len(chunk))
        return chunk, torch.from_numpy(np.stack(arr)), kw, fracs

    dev_type = torch.device(device).type
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, batches[0]) if prefetch else None
        for i, batch in enumerate(batches):
            chunk, x, kw, fracs = pending.result() if pending is not None else read(batch)   # None: no prefetch
            if prefetch and i + 1 < len(batches):
                pending = pool.submit(read, batches[i + 1])
            with torch.no_grad(), torch.autocast(dev_type, dtype=dtype, enabled=dtype != torch.float32):
                res = model(hr=x.to(device), latlon=latlon.expand(len(chunk), 2).to(device),
                            **{k: v.to(device) for k, v in kw.items()})
            yield from zip(chunk, res[output].float().cpu().numpy(), fracs, strict=True)
