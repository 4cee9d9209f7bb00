"""Prediction over a large scene: a task model's class map, through the same tiled machinery as
``embed`` (tiles blended without seams, one row of tiles in memory, atomic output, resumable
pieces, torchrun ranks), at the input's resolution, CRS and transform."""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .. import distributed
from ..data.geotiff import check_same_scene, hr_scaler, open_raster
from ..data.series import check_coverage, series_files, series_input, series_manifest
from ..errors import InputError
from ..finetune.task import DENSE
from .class_map import ClassMapSink
from .runner import TileRun, model_fingerprint, refuse_to_overwrite_an_input, run_in_pieces, stream
from .tiler import SCALE


class _Probabilities(nn.Module):
    """A segmentation task model as the tiler calls a model: hr (+ latlon) -> {"probs": softmax}."""

    def __init__(self, task):
        super().__init__()
        self.task = task
        self.normalisation = task.normalisation   # the statistics the tiler normalises with

    def forward(self, hr: Tensor, latlon: Tensor | None = None, **series: Tensor) -> dict[str, Tensor]:
        return {"probs": self.task(hr, latlon, **series).float().softmax(1)}


def predict_scene(task, src: str | os.PathLike, dst: str | os.PathLike, *, tile: int = 256, overlap: int = 64,
                  batch_size: int = 4, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  progress: bool = False, resume: bool = False, chunk_rows: int = 256, hr_scale: str | None = None,
                  probabilities: str | os.PathLike | None = None, gdal_cache_mb: int = 16, s2=None, s1=None,
                  s2_dates=None, s1_dates=None, s2_band_order: str | None = None, distribute: bool = True,
                  image2: str | os.PathLike | None = None, hr_scale2: str | None = None,
                  score_threshold: float = 0.05) -> dict:
    """Write the class map of an HR GeoTIFF (``task``: a segmentation or change
    :class:`~skysense_fast.finetune.TaskModel`) to ``dst``, a single-band COG in the task's
    class values (nodata where the input is nodata), with colours and class names. A change
    task compares ``src`` with ``image2``, the scene's second date (any CRS / resolution: it is
    read onto ``src``'s grid; pixels it does not cover are no change input; ``hr_scale2``, default
    the task's, else ``hr_scale``, scales it). For a temporal task
    (Sentinel series alone) ``src`` is the grid whose pixels are predicted (e.g. its label
    raster), ``tile`` and ``overlap`` in those pixels (:mod:`.predict_series`). A detection task
    writes its boxes (score >= ``score_threshold``) as a GeoPackage ``dst`` (:mod:`.predict_boxes`).

    Args mirror :func:`~skysense_fast.infer.embed_scene`; ``hr_scale`` and ``s2_band_order``
    default to the task's own; ``s2`` / ``s1``: the series of the scene, required exactly when
    the task was trained on them; ``probabilities``: also write the per-class probabilities
    (float32, one band per class) there. Returns a summary (tiles run, output shape).
    """
    import rasterio

    spec = task.spec
    if spec.kind == "detection":
        extra = [name for name, v in (("--probabilities", probabilities), ("--image2", image2), ("--s2", s2),
                                      ("--s1", s1), ("--resume", resume)) if v]
        if extra or (distribute and int(os.environ.get("WORLD_SIZE", "1")) > 1):
            raise InputError("predict: a detection task reads one HR scene in one process (a list of scenes spreads "
                             f"over torchrun's ranks); it takes no {', '.join(extra) or 'torchrun within one scene'}")
        from .predict_boxes import predict_boxes

        return predict_boxes(task, src, dst, tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                             dtype=dtype, progress=progress, hr_scale=hr_scale, score_threshold=score_threshold)
    if spec.kind not in DENSE:
        raise InputError(f"predict: the task is {spec.kind}; a class map needs a segmentation, change or temporal "
                         "task (a detection task: boxes)")
    dst = os.fspath(dst)
    probabilities = None if probabilities is None else os.fspath(probabilities)
    if probabilities is not None and os.path.abspath(probabilities) == os.path.abspath(dst):
        raise InputError("predict: the probabilities and the class map need two different paths")
    if spec.kind == "temporal":   # Sentinel series alone: src is the grid whose pixels are predicted
        if image2 is not None:
            raise InputError("predict: --image2 is the second date of a change task; this task is temporal")
        if chunk_rows < 1:
            raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
        from .predict_series import predict_series_scene

        return predict_series_scene(
            task, src, dst, series={"s2": series_input(s2, s2_dates, "s2", s2_band_order or spec.s2_band_order),
                                    "s1": series_input(s1, s1_dates, "s1")},
            tile=tile, overlap=overlap, batch_size=batch_size, device=device, dtype=dtype, progress=progress,
            probabilities=None if probabilities is None else os.fspath(probabilities), resume=resume,
            chunk_rows=chunk_rows, distribute=distribute)
    if tile % SCALE or overlap % SCALE or not (0 <= overlap < tile):
        raise InputError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {SCALE} with 0 <= overlap < tile")
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if (image2 is None) != (spec.kind != "change"):
        raise InputError("predict: a change task compares two dates: give --image2" if image2 is None else
                         "predict: --image2 is the second date of a change task; this task is " + spec.kind)

    series = {"s2": series_input(s2, s2_dates, "s2", s2_band_order or spec.s2_band_order),
              "s1": series_input(s1, s1_dates, "s1")}
    given = {"hr", *(k for k, v in series.items() if v), *(("hr2",) if image2 is not None else ())}
    if given != set(spec.inputs):
        missing, extra = sorted(set(spec.inputs) - given), sorted(given - set(spec.inputs))
        raise InputError(f"predict: the task was trained on {', '.join(spec.inputs)}: "
                         + (f"give {', '.join('--' + k for k in missing)}" if missing else
                            f"it takes no {', '.join('--' + k for k in extra)}"))
    inputs = [src, *task.source_files, *((image2,) if image2 is not None else ())] + [
        f for files in series_files(series).values() for f in files]
    for out in filter(None, (dst, probabilities)):
        refuse_to_overwrite_an_input(out, inputs)
    rank, world = distributed.init() if distribute else (0, 1)
    model = _Probabilities(task.eval().to(device))
    hr_scale = hr_scale if hr_scale is not None else spec.hr_scale
    with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb * 2**20), open_raster(src, bands=3) as ds:
        H, W = ds.height, ds.width
        for kind, acq in series.items():
            if acq:
                check_coverage(acq, ds.crs, ds.bounds, kind)
        tiled: dict = dict(series)
        if image2 is not None:
            image2 = os.fspath(image2)
            with open_raster(image2, bands=3, what="--image2") as ds2:
                check_same_scene(ds, ds2)
                second = hr_scale2 if hr_scale2 is not None else spec.hr_scale2 if spec.hr_scale2 is not None \
                    else hr_scale
                tiled["hr2"] = (image2, hr_scaler(ds2, second, "--hr-scale2"))
        profile = dict(driver="GTiff", height=H, width=W, crs=ds.crs, transform=ds.transform, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
        run = TileRun(model, ds, tile, overlap, batch_size, device, dtype, "probs", H, prefetch=True,
                      series=tiled, progress=progress, scale=hr_scaler(ds, hr_scale), out_scale=1)

        def sink(path: str) -> ClassMapSink:
            return ClassMapSink(path, profile, spec.classes, probabilities)

        if world == 1 and not resume:
            stream(run, sink(dst + ".partial"), 0, H, dst)
        else:
            piece_profile = dict(profile, dtype="float32", nodata=float("nan"))
            run_in_pieces(run, dst, piece_profile, "probs", chunk_rows, resume, rank, world,
                          manifest={"src": os.path.abspath(os.fspath(src)), "tile": tile, "overlap": overlap,
                                    "output": "class_map", "shape": [H, W], "chunk_rows": chunk_rows,
                                    "model": model_fingerprint(task), "dtype": str(dtype), "hr_scale": hr_scale,
                                    "series": series_manifest(series),
                                    "image2": None if image2 is None else os.path.abspath(image2)},
                          final_sink=sink)
    return {"tiles": run.tiles_run, "shape": (1, H, W), "classes": list(spec.class_values)}
