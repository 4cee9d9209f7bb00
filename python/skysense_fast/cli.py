"""The ``skysense-fast`` command: ``embed`` (GeoTIFF -> feature GeoTIFF), ``demo``, ``info``,
``sinkhorn-demo``, ``pretrain``, ``finetune``, ``predict`` (GeoTIFF -> class map), ``evaluate``, ``export``,
``convert``, ``bench``, ``save-pretrained``. User errors print one line and exit with status 2, no traceback.
The arguments are declared in :mod:`.cli_args`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from .errors import InputError


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import skysense_fast
    from skysense_fast import models
    from skysense_fast.data.sample import hr_sample

    configs = {}
    for name in models.list_configs():
        with torch.device("meta"):  # sizes without allocating
            m = models.create(name)
        assert m.geo is not None   # a new model has its prototype bank
        cfg = m.config
        configs[name] = {"parameters_M": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
                         "geo_bank_M": round(m.geo.prototypes.numel() / 1e6, 2), "hr_width": cfg.hr_out_dim,
                         "fusion_width": cfg.fusion_dim, "window": cfg.window_size}
    sample = hr_sample()
    info = {"skysense_fast": skysense_fast.__version__, "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "backends": skysense_fast.backends(), "configs": configs,
            "demo_sample": str(sample) if sample else None}
    print(json.dumps(info, indent=2))
    return 0


def _load_model(args: argparse.Namespace):
    """The model of ``--config`` with ``--weights``; a save_pretrained folder or hub id given as
    the weights brings its own config (``--config``, if given too, must be the same)."""
    import torch

    from skysense_fast import models
    from skysense_fast.weights import from_pretrained, load_any
    from skysense_fast.weights.folders import is_pretrained_folder, looks_like_repo_id

    torch.manual_seed(0)
    one = args.weights[0] if args.weights and len(args.weights) == 1 else None
    if one is not None and (is_pretrained_folder(one) or looks_like_repo_id(one)):
        model = from_pretrained(one)
        if not isinstance(model, models.SkySense):
            raise InputError(f"--weights {one} holds a fine-tuned task model: give it as --task")
        if args.config is not None and models.get_config(args.config) != model.config:
            raise InputError(f"--weights {one} is a model of another config than --config {args.config} (leave "
                             "--config out: the folder brings its own)")
        args.config = args.config or one
        print(f"weights: loaded {one} (config, weights and input statistics)")
        return model
    args.config = args.config or "skysense-tiny"
    model = models.create(args.config)
    if args.weights:
        print(f"weights: {load_any(model, args.weights)}")
    else:
        print(f"note: no --weights given: {args.config} runs with random weights (the pipeline, not the features)")
    return model


def _series(text: str | None):
    """--s2 / --s1: a path, or comma-separated STAC item files (a list)."""
    if text and "," in text and not os.path.exists(text):
        return [p.strip() for p in text.split(",") if p.strip()]
    return text


def _dates(text: str | None) -> list[str] | None:
    """"2024-01-05,2024-02-10" -> ["2024-01-05", "2024-02-10"] (checked by the reader)."""
    return None if not text else [d.strip() for d in text.split(",") if d.strip()]


def _cmd_embed(args: argparse.Namespace) -> int:
    import time

    import torch

    from skysense_fast.data import open_raster
    from skysense_fast.infer import embed_scene

    _tiling(args)
    listed = _scene_list(args)
    if listed is None:
        with open_raster(args.input, bands=3) as ds:  # a missing or unusable input fails before the model loads
            H, W = ds.height, ds.width
        _announce_tiles(H, W, args.tile, args.overlap)
    model = _load_model(args)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    device = _rank_device(args.device)

    def embed(src: str, dst: str, distribute: bool = True) -> dict:
        try:
            return embed_scene(model, src, dst, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                               device=device, dtype=dtype, output=args.features, progress=args.progress,
                               resume=args.resume, chunk_rows=args.chunk_rows, hr_scale=args.hr_scale,
                               distribute=distribute, **_series_kw(args))
        except torch.OutOfMemoryError:
            raise InputError(f"out of memory on {device} with --tile {args.tile} --batch-size {args.batch_size}: "
                             "lower --batch-size (then --tile), or use --dtype bfloat16") from None

    if listed is not None:
        return _run_list(args, listed, lambda scene, dst: embed(scene.src, dst, distribute=False), "embed")
    t0 = time.perf_counter()
    info = embed(args.input, args.output)
    C, h, w = info["shape"]
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {args.output}: {C} feature bands, {h} x {w} pixels (32 input pixels each), "
              f"{info['tiles']} tiles run by this process in {time.perf_counter() - t0:.1f} s")
    return 0


def _scene_list(args: argparse.Namespace):
    """The scenes of a list input (a .txt of paths, a STAC collection), or None for one scene."""
    from skysense_fast.infer.scenes import is_scene_list, read_scene_list

    if not is_scene_list(args.input):
        if args.asset is not None:
            raise InputError("--asset names the HR asset of STAC items: give a STAC file as the input")
        return None
    if getattr(args, "probabilities", None):
        raise InputError("--probabilities with a list of scenes: run such scenes one at a time")
    if getattr(args, "image2", None):
        raise InputError("--image2 with a list of scenes: a change task's two dates are one scene; run them one at "
                         "a time")
    return read_scene_list(args.input, args.asset)


def _run_list(args: argparse.Namespace, scenes, work, what: str, suffix: str = ".tif") -> int:
    """Whole scenes over the ranks, one output each in the -o folder; 1 if any failed."""
    from skysense_fast.infer.scenes import SUMMARY, ranks, run_scenes

    result = run_scenes(scenes, args.output, work, resume=args.resume, what=what, suffix=suffix)
    mine = result["records"]
    counts = {s: sum(r["status"] == s for r in mine) for s in ("done", "failed", "skipped")}
    rank, world = ranks()
    print(f"{what}: rank {rank} of {world}: {len(mine)} of {len(scenes)} scenes: {counts['done']} done, "
          f"{counts['failed']} failed, {counts['skipped']} skipped")
    for r in mine:
        if r["status"] == "failed":
            print(f"  failed: {r['scene']}: {' '.join(r['error'].split())[:300]}")
    whole = result["summary"]
    if whole is not None:
        print(f"{what}: all ranks: {whole['done']} done, {whole['failed']} failed, {whole['skipped']} skipped; "
              f"{os.path.join(args.output, SUMMARY)}")
    return 1 if counts["failed"] else 0


def _announce_tiles(H: int, W: int, tile: int, overlap: int, what: str = "embedding") -> None:
    """The size of the job, up front: a huge raster is visible before hours pass."""
    from skysense_fast.infer.tiler import tile_starts

    if tile % 32 or overlap % 32 or not 0 <= overlap < tile:
        return  # embed_scene names the problem
    n = len(tile_starts(H, tile, tile - overlap)) * len(tile_starts(W, tile, tile - overlap))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{what} {H} x {W} pixels: {n} tiles of {tile} px (overlap {overlap})")


def _pca_png(scene: str, features: str, png: str) -> None:
    """The input next to a 3-component PCA of the features (upsampled), as one PNG."""
    import numpy as np
    import rasterio
    from PIL import Image

    with rasterio.open(scene) as s, rasterio.open(features) as f:
        rgb = s.read([1, 2, 3]).transpose(1, 2, 0)
        feat = f.read().astype(np.float64)
    C, h, w = feat.shape
    x = feat.reshape(C, -1).T
    ok = np.isfinite(x).all(1)                      # nodata pixels (NaN) stay black
    mean = x[ok].mean(0) if ok.any() else np.zeros(C)
    x = np.where(ok[:, None], x - mean, 0.0)
    _, _, vt = np.linalg.svd(x[ok] if ok.sum() > 1 else x, full_matrices=False)
    pcs = (x @ vt[:3].T).reshape(h, w, 3)
    pcs = (pcs - pcs.min((0, 1))) / np.maximum(np.ptp(pcs, (0, 1)), 1e-12)
    pcs[~ok.reshape(h, w)] = 0
    pca = Image.fromarray((pcs * 255).astype(np.uint8)).resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (rgb.shape[1] * 2 + 8, rgb.shape[0]), "white")
    canvas.paste(Image.fromarray(rgb), (0, 0))
    canvas.paste(pca, (rgb.shape[1] + 8, 0))
    tmp = png + ".partial.png"
    canvas.save(tmp)
    import os

    os.replace(tmp, png)


def _cmd_demo(args: argparse.Namespace) -> int:
    """embed on the sample scene (the real aerial image `make demo` prepares, else a generated
    one); writes the features and a PNG next to it."""
    import shutil

    from skysense_fast.data.sample import DESCRIPTION, hr_sample

    os.makedirs(args.out_dir, exist_ok=True)
    scene = os.path.join(args.out_dir, "demo_scene.tif")
    feats = os.path.join(args.out_dir, "demo_features.tif")
    png = os.path.join(args.out_dir, "demo.png")
    real = None if args.synthetic else hr_sample()
    if real is not None:
        shutil.copyfile(real, scene)
        print(f"scene: {scene} ({DESCRIPTION})")
    else:
        from skysense_fast.data.demo_data import write_scene

        write_scene(scene)
        print(f"scene: {scene} (512 x 512 px, synthetic: fields, a river, a road; `make demo` prepares a real one)")
    ns = argparse.Namespace(config=args.config, weights=args.weights, input=scene, output=feats, tile=256, overlap=64,
                            batch_size=4, device="cpu", dtype="float32", features="fused", progress=False,
                            resume=False, chunk_rows=64, hr_scale=None, asset=None, s2=None, s1=None, s2_dates=None,
                            s1_dates=None, s2_band_order="model")
    _cmd_embed(ns)
    _pca_png(scene, feats, png)
    print(f"wrote {png}: the scene next to a 3-component PCA of its features")
    return 0


def _cmd_save_pretrained(args: argparse.Namespace) -> int:
    from skysense_fast.infer.runner import refuse_to_overwrite_an_input
    from skysense_fast.weights import save_pretrained

    model = _load_task(args) if args.task else _load_model(args)
    inputs = list(getattr(model, "source_files", ())) + [w.split("=", 1)[-1] for w in args.weights or []]
    for name in ("model.safetensors", "config.json", "README.md"):
        refuse_to_overwrite_an_input(os.path.join(args.output, name), inputs)
    save_pretrained(model, args.output, name=args.name, license=args.license, description=args.description)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}/: model.safetensors ({params / 1e6:.1f} M parameters), config.json, README.md "
          "(load it with skysense_fast.from_pretrained or --weights / --task)")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    """Official .pth weights -> this package's safetensors, once: the pickles are read here
    (weights_only=True) and never again."""
    from skysense_fast.weights import save_weights

    if not args.weights:
        raise InputError("convert: give the official weights with --weights (a full checkpoint, or part=FILE items)")
    if not args.output.endswith(".safetensors"):
        raise InputError(f"convert: -o must name a .safetensors file, got {args.output}")
    model = _load_model(args)
    save_weights(model, args.output)  # atomic: a temporary file, then a rename
    print(f"wrote {args.output}: {args.config} weights as safetensors (use it with --weights)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """torch.export (.pt2) or TorchScript (trace) file of the HR encoder, the model or a task."""
    from skysense_fast.deploy import model_program, task_program, write_program

    size = args.size
    if size % 32:
        raise InputError(f"--size must be a multiple of 32, got {size}")
    if args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if args.task:  # a fine-tuned task model
        from skysense_fast.infer.runner import refuse_to_overwrite_an_input

        refuse_to_overwrite_an_input(args.output, [args.task])
        task = _load_task(args)
        module, example = task_program(task, size, args.task, args.frames)
        args.part, args.config = f"{task.spec.kind} task", args.task
    else:
        module, example = model_program(_load_model(args).eval(), args.part, size, args.frames)
    write_program(module, example, args.output, args.format)
    shapes = ", ".join(str(tuple(x.shape)) for x in example)
    fixed = " (TorchScript traces are of these input sizes only)" if args.format == "torchscript" else ""
    print(f"wrote {args.output}: {args.part} of {args.config} as {args.format} (example inputs {shapes}){fixed}")
    return 0


def _cmd_sinkhorn_demo(args: argparse.Namespace) -> int:
    """Prototype assignment on a bundled synthetic problem, checked against the reference."""
    import torch

    import skysense_fast
    from skysense_fast.ops import sinkhorn_reference

    gen = torch.Generator().manual_seed(0)
    B, N, K, d = args.batch, args.samples, args.prototypes, 64
    feats = torch.nn.functional.normalize(torch.randn(B, N, d, generator=gen), dim=-1)
    protos = torch.nn.functional.normalize(torch.randn(K, d, generator=gen), dim=-1)
    scores = feats @ protos.T  # cosine similarities, as in SwAV / SkySense prototype learning
    t0 = time.perf_counter()
    q, iters = skysense_fast.sinkhorn(scores, epsilon=0.05, num_iters=3, return_iters=True)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_ref, _ = sinkhorn_reference(scores.double(), 0.05, 3)
    t_ref = time.perf_counter() - t0
    err = (q.double() - q_ref).abs().max().item()
    load = q.sum(1) / (N / K)  # prototype load relative to an equal share
    print(f"sinkhorn: {B} problems x {N} samples x {K} prototypes, eps=0.05, {int(iters[0])} iterations")
    print(f"  fused {skysense_fast.build_info().get('cpu_capability', '?')} kernel {t_fast * 1e3:.1f} ms, "
          f"float64 reference {t_ref * 1e3:.1f} ms, max |Q - Q_ref| = {err:.2e}")
    print(f"  rows sum to 1 within {(q.sum(2) - 1).abs().max().item():.1e}; "
          f"prototype load min/max = {load.min().item():.3f}/{load.max().item():.3f} of an equal share")
    print(f"  hard assignments use {q.argmax(2).unique().numel()} of {K} prototypes")
    return 0 if err < 1e-4 else 1


def _overrides(args: argparse.Namespace) -> dict:
    """--set SECTION.FIELD=VALUE items, --steps and --out-dir as config overrides."""
    from skysense_fast.config import parse_set

    overrides = parse_set(args.set or [])
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    if args.out_dir is not None:
        overrides["train.out_dir"] = args.out_dir
    return overrides


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from skysense_fast.pretrain import load_config, pretrain

    cfg = load_config(args.config, _overrides(args))
    result = pretrain(cfg, resume=not args.no_resume)
    losses = result["losses"]
    if losses and int(os.environ.get("RANK", "0")) == 0:
        n = max(1, min(10, len(losses) // 4))            # single steps are noisy: average windows
        first = sum(r["total"] for r in losses[:n]) / n
        last = sum(r["total"] for r in losses[-n:]) / n
        print(f"pretrain {result['status']} at step {result['step']}: total loss {first:.4f} (mean of steps "
              f"{losses[0]['step']}-{losses[n - 1]['step']}) -> {last:.4f} (steps {losses[-n]['step']}-"
              f"{losses[-1]['step']}); {losses[-1]['samples_per_s']:.1f} samples/s; "
              f"metrics in {cfg.train.out_dir}/metrics.jsonl")
    return {"done": 0, "stopped": 0, "nan": 3}[result["status"]]


def _cmd_finetune(args: argparse.Namespace) -> int:
    from skysense_fast.finetune import finetune, load_config

    cfg = load_config(args.config, _overrides(args))
    result = finetune(cfg, resume=not args.no_resume)
    if int(os.environ.get("RANK", "0")) == 0:
        losses, val = result["losses"], result["validation"] or {}
        loss = f"loss {losses[0]['total']:.4f} -> {losses[-1]['total']:.4f}; " if losses else ""
        keys = [k for k in ("overall_accuracy", "miou", "f1_macro", "kappa", "map") if k in val]
        scores = ", ".join(f"{k} {val[k]:.4f}" for k in keys)
        print(f"finetune {result['status']} at step {result['step']}: {loss}validation {scores or 'not run'}; "
              f"metrics in {cfg.train.out_dir}/metrics.json")
    return {"done": 0, "stopped": 0, "nan": 3}[result["status"]]


def _tiling(args: argparse.Namespace, detection: bool = False) -> None:
    """--tile / --overlap where not given: 256 / 64 for maps; 800 / 256 for boxes (DIOR's chip size,
    and an overlap no smaller than the objects a tile's edge may cut: see infer.predict_boxes)."""
    tile, overlap = (800, 256) if detection else (256, 64)
    args.tile = tile if args.tile is None else args.tile
    args.overlap = min(overlap, max(0, args.tile - 32)) if args.overlap is None else args.overlap


def _load_task(args: argparse.Namespace):
    from skysense_fast.finetune import load_task

    return load_task(args.task)


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from skysense_fast.data import open_raster
    from skysense_fast.finetune.task import read_task_spec
    from skysense_fast.infer.predict import predict_scene

    if not os.path.exists(args.input):   # before the task: a missing input is named as such
        raise FileNotFoundError(f"input not found: {args.input}")
    if read_task_spec(args.task).kind == "classification":
        return _classify(args)
    listed = _scene_list(args)
    if listed is None:
        with open_raster(args.input) as ds:  # a missing or unusable input fails before the model loads
            H, W = ds.height, ds.width
    detection = read_task_spec(args.task).kind == "detection"
    _tiling(args, detection)
    if listed is None:
        _announce_tiles(H, W, args.tile, args.overlap, "predicting")
    task = _load_task(args)

    def predict(src: str, dst: str, distribute: bool = True) -> dict:
        try:
            return predict_scene(task, src, dst, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                                 device=_rank_device(args.device),
                                 dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype],
                                 progress=args.progress, chunk_rows=args.chunk_rows,
                                 # a list's --resume skips whole scenes (run_scenes); a detection runs one go
                                 resume=args.resume and not (detection and listed is not None),
                                 hr_scale=args.hr_scale, probabilities=args.probabilities, distribute=distribute,
                                 image2=args.image2, hr_scale2=args.hr_scale2, score_threshold=args.score_threshold,
                                 **_series_kw(args))
        except torch.OutOfMemoryError:
            raise InputError(f"out of memory on {args.device} with --tile {args.tile} --batch-size "
                             f"{args.batch_size}: lower --batch-size (then --tile), or use --dtype bfloat16") from None

    if listed is not None:
        return _run_list(args, listed, lambda scene, dst: predict(scene.src, dst, distribute=False), "predict",
                         ".gpkg" if detection else ".tif")
    t0 = time.perf_counter()
    info = predict(args.input, args.output)
    took = f"{info['tiles']} tiles run by this process in {time.perf_counter() - t0:.1f} s"
    if "boxes" in info:
        print(f"wrote {args.output}: {info['boxes']} boxes of {H} x {W} pixels (layer {info['layer']!r}, "
              f"{info['crs']}; per class {info['per_class']}), {took}")
    elif int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {args.output}: class map of {H} x {W} pixels, classes {info['classes']}, {took}")
    return 0


def _classify(args: argparse.Namespace) -> int:
    """predict with a classification task: the chips' labels as a CSV."""
    import torch

    from skysense_fast.infer.predict_chips import classify_chips

    given = [f"--{k.replace('_', '-')}" for k in ("image2", "probabilities", "s2", "s1", "hr_scale")
             if getattr(args, k)] + (["--resume"] if args.resume else [])
    if given:
        raise InputError(f"predict: a classification task labels 8-bit RGB chips; it takes no {', '.join(given)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError("predict: chip labels are written by one process (not under torchrun)")
    task = _load_task(args)
    t0 = time.perf_counter()
    info = classify_chips(task, args.input, args.output, batch_size=args.batch_size, device=args.device,
                          dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype],
                          threshold=args.threshold, asset=args.asset)
    print(f"wrote {args.output}: labels of {info['chips']} chips ({info['per_class']}) in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from skysense_fast.finetune.evaluate import evaluate_boxes, evaluate_chips, evaluate_coco, evaluate_scene

    if (args.chips is None) == (args.image is None):
        raise InputError("evaluate: give either --image and --labels (a scene) or --chips (classification; detection: "
                         "a COCO JSON)")
    if args.image is not None and args.labels is None:
        raise InputError("evaluate: --image needs --labels (a class raster or a vector layer; detection: a vector "
                         "layer of boxes)")
    task = _load_task(args)
    _tiling(args, task.spec.kind == "detection")
    if args.chip_dir is not None and (args.chips is None or task.spec.kind != "detection"):
        raise InputError("evaluate: --chip-dir is the image folder of a detection task's COCO --chips")
    if args.chips is not None and task.spec.kind == "detection":
        result = evaluate_coco(task, args.chips, args.chip_dir, args.batch_size, args.device)
    elif args.chips is not None:
        if task.spec.kind != "classification":
            raise InputError(f"evaluate: --chips scores a classification or detection task; {args.task} is "
                             f"{task.spec.kind}")
        result = evaluate_chips(task, args.chips, args.batch_size, args.device)
    elif task.spec.kind == "detection":
        if args.image2 or args.s2 or args.s1:
            raise InputError("evaluate: a detection task reads one HR image: no --image2, --s2 or --s1")
        result = evaluate_boxes(task, args.image, args.labels, label_field=args.label_field, tile=args.tile,
                                overlap=args.overlap, batch_size=args.batch_size, device=args.device)
    else:
        if task.spec.kind not in ("segmentation", "change", "temporal"):
            raise InputError(f"evaluate: --image scores a segmentation, change or temporal task; {args.task} is "
                             f"{task.spec.kind}")
        result = evaluate_scene(task, args.image, args.labels, label_field=args.label_field, tile=args.tile,
                                overlap=args.overlap, batch_size=args.batch_size, device=args.device,
                                image2=args.image2, hr_scale2=args.hr_scale2, **_series_kw(args))
    print(json.dumps(result, indent=1))
    return 0


def _series_kw(args: argparse.Namespace) -> dict:
    return {"s2": _series(args.s2), "s1": _series(args.s1), "s2_dates": _dates(args.s2_dates),
            "s1_dates": _dates(args.s1_dates), "s2_band_order": args.s2_band_order}


def _rank_device(device: str) -> str:
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: one card per rank
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _cmd_bench(args: argparse.Namespace) -> int:
    from skysense_fast import bench

    bench.run(args.device, args.scale)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli_args import build_parser, check_common
    from .errors import input_errors

    args = build_parser().parse_args(argv)
    _log_to_stderr(args.cmd, logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)

    try:
        check_common(args)
        return COMMANDS[args.cmd](args)
    except input_errors() as e:
        print(f"skysense-fast {args.cmd}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception:  # not bad input: a bug, which keeps its traceback
        print(f"skysense-fast {args.cmd}: internal error, not a problem with your input: please report it "
              "with the traceback below", file=sys.stderr)
        raise


class _Prefixed(logging.Formatter):
    """``skysense-fast CMD: warning: ...`` for warnings, the bare message for information."""

    def __init__(self, cmd: str):
        super().__init__()
        self.cmd = cmd

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno == logging.INFO:
            return text
        return f"skysense-fast {self.cmd}: {record.levelname.lower()}: {text}"


def _log_to_stderr(cmd: str, level: int) -> None:
    """The package's log (``skysense_fast.*``) and Python warnings on stderr, one handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Prefixed(cmd))
    for name in ("skysense_fast", "py.warnings"):
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h.formatter, _Prefixed)]:
            logger.removeHandler(h)     # main() called again in one process (tests)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    logging.captureWarnings(True)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 600 else text[:600] + " ..."


COMMANDS = {"info": _cmd_info, "embed": _cmd_embed, "demo": _cmd_demo, "export": _cmd_export, "convert": _cmd_convert,
            "save-pretrained": _cmd_save_pretrained, "sinkhorn-demo": _cmd_sinkhorn_demo, "bench": _cmd_bench,
            "pretrain": _cmd_pretrain, "finetune": _cmd_finetune, "predict": _cmd_predict, "evaluate": _cmd_evaluate}


if __name__ == "__main__":
    sys.exit(main())
