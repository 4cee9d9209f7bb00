"""The ``skysense-fast`` command line: every subcommand's arguments (declared once, here) and
the checks that need no work done (sizes, the device, the output path). The commands
themselves are in :mod:`skysense_fast.cli`."""

from __future__ import annotations

import argparse
import os

from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    """The parser; ``args.cmd`` names the subcommand."""
    p = argparse.ArgumentParser(prog="skysense-fast", description="SkySense with fused kernels")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    loud.add_argument("-v", "--verbose", action="store_true", help="log debug messages too (kernel fall-backs)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="build, backends and devices")

    def model_args(q):
        q.add_argument("--config", help="model config (skysense-2b, -base, -tiny; default skysense-tiny, or the "
                                        "config of a save_pretrained folder given as --weights)")
        q.add_argument("--weights", action="append", metavar="FILE|FOLDER|REPO|PART=FILE",
                       help="weights: a .safetensors file (save_weights), a save_pretrained folder or hub repository "
                            "id, an official full checkpoint, or the split official files as hr=FILE s2=FILE s1=FILE "
                            "head_s2=FILE head_s1=FILE fusion=FILE (repeat the option)")

    def series_args(q, band_order: str | None):
        q.add_argument("--s2", help="Sentinel-2 series: a folder of GeoTIFFs (10 bands B2..B12, + optional cloud-mask "
                                    "band; dates in the file names or tags), one multi-band GeoTIFF of the series, or "
                                    "STAC items (an ItemCollection .json or item .json files, comma-separated; "
                                    "Earth Search / Planetary Computer L2A naming, SCL clouds, the offset as the "
                                    "items state it)")
        q.add_argument("--s1", help="Sentinel-1 series: a folder of GeoTIFFs (VV, VH; dB or linear), one multi-band "
                                    "file, or STAC items of RTC backscatter (vv, vh assets)")
        q.add_argument("--s2-dates", help="explicit S2 dates, comma-separated YYYY-MM-DD (one per file / acquisition)")
        q.add_argument("--s1-dates", help="explicit S1 dates, comma-separated YYYY-MM-DD")
        q.add_argument("--s2-band-order", choices=("model", "official"), default=band_order,
                       help="how S2 files store their bands: model (B2..B8, B8A, B11, B12) or official (B8 fourth, "
                            "as the official SkySense files); band names in the descriptions decide where present"
                            + ("" if band_order else "; default: the task's"))

    def tile_args(q):
        q.add_argument("--tile", type=int, help="tile size in pixels (multiple of 32; default 256, detection 800)")
        q.add_argument("--overlap", type=int, help="tile overlap in pixels (multiple of 32; default 64, detection 256: "
                                                   "objects larger than the overlap may be cut at tile seams)")
        q.add_argument("--batch-size", type=int, default=4)
        q.add_argument("--device", default="cpu")

    e = sub.add_parser("embed", help="embed an HR GeoTIFF into a georeferenced feature GeoTIFF")
    e.add_argument("input", help="RGB GeoTIFF (8-bit, or any dtype with --hr-scale); or a list of scenes: a .txt of "
                                 "paths or a STAC ItemCollection .json (one output each in the -o folder, whole "
                                 "scenes spread over torchrun's ranks)")
    e.add_argument("-o", "--output", required=True, help="output GeoTIFF (written atomically); for a list, a folder")
    e.add_argument("--asset", help="a STAC list's HR asset (default: visual, image, or its only GeoTIFF)")
    model_args(e)
    e.add_argument("--hr-scale", metavar="max=VALUE|percentile=LO,HI",
                   help="how an input that is not 8-bit maps to 0-255 (required for such inputs: never guessed)")
    tile_args(e)
    e.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    e.add_argument("--features", choices=("fused", "geo"), default="fused")
    e.add_argument("--progress", action="store_true")
    e.add_argument("--resume", action="store_true",
                   help="keep finished pieces in OUTPUT.parts/ and skip them when rerun (an interrupted run continues)")
    e.add_argument("--chunk-rows", type=int, default=64, help="output rows per piece (resumable / torchrun runs)")
    series_args(e, band_order="model")
    d = sub.add_parser("demo", help="embed the sample scene; write its features and a PCA picture")
    d.add_argument("--out-dir", default="demo_output")
    d.add_argument("--synthetic", action="store_true", help="use the generated scene even if the real sample is there")
    model_args(d)
    x = sub.add_parser("export", help="write a torch.export (.pt2) or TorchScript file of the HR encoder / HR model")
    x.add_argument("-o", "--output", required=True)
    model_args(x)
    x.add_argument("--part", choices=("hr", "model", "multimodal"), default="hr",
                   help="hr: SwinV2 encoder; model: HR -> fused, geo; multimodal: HR + S2 + S1 series "
                        "(hr, s2, s1, doy_s2, doy_s1, valid_s2, valid_s1, latlon) -> fused, geo")
    x.add_argument("--frames", type=int, default=4, help="multimodal, or a task on Sentinel series: acquisitions per "
                                                         "series in the example")
    x.add_argument("--task", help="export a fine-tuned task model (inputs -> logits: hr [hr2], then per series s2 "
                                  "doy_s2 valid_s2 / s1 ..., then latlon where used) instead of --part")
    x.add_argument("--format", choices=("export", "torchscript"), default="export")
    x.add_argument("--size", type=int, default=256, help="example HR input size (pixels, multiple of 32)")
    cv = sub.add_parser("convert", help="official .pth weights -> a .safetensors file (read the pickles once)")
    cv.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    model_args(cv)
    sp = sub.add_parser("save-pretrained", help="weights (or a task) as a Hugging Face-style folder: "
                                                "model.safetensors, config.json and a README.md model card")
    sp.add_argument("-o", "--output", required=True, help="the folder to write (created if needed)")
    model_args(sp)
    sp.add_argument("--task", help="a fine-tuned task file instead of --config / --weights")
    sp.add_argument("--license", help="the licence of these weights (not of this code), e.g. cc-by-4.0; for "
                                      "converted official weights, the terms of their release")
    sp.add_argument("--name", help="the model's name on its card (default: the folder's name)")
    sp.add_argument("--description", default="", help="a paragraph for the model card")
    sd = sub.add_parser("sinkhorn-demo", help="Sinkhorn-Knopp prototype assignment on a synthetic problem")
    sd.add_argument("--batch", type=int, default=8)
    sd.add_argument("--samples", type=int, default=4096)
    sd.add_argument("--prototypes", type=int, default=100)
    b = sub.add_parser("bench", help="each fused op against its reference on this machine (a quick health check)")
    b.add_argument("--device", default="cpu", help="cpu or cuda")
    b.add_argument("--scale", type=int, default=1, help="problem size multiplier (1: seconds on a laptop)")

    def run_args(q, example: str):
        q.add_argument("config", help=f"YAML file, e.g. configs/{example}")
        q.add_argument("--steps", type=int, help="override train.steps")
        q.add_argument("--out-dir", help="override train.out_dir (checkpoints, metrics, weights)")
        q.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override any field (repeatable)")
        q.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the output folder")

    pt = sub.add_parser("pretrain", help="pretrain SkySense from a YAML config (torchrun for data parallel / FSDP2)")
    run_args(pt, "pretrain/skysense-tiny.yaml")

    ft = sub.add_parser("finetune", help="fine-tune a task (segmentation of a scene, classification of chips) "
                                         "from a YAML config; writes OUT_DIR/<task.name>.safetensors")
    run_args(ft, "finetune/segmentation-tiny.yaml")

    pr = sub.add_parser("predict", help="the class map of an HR GeoTIFF from a fine-tuned task (a COG in the "
                                        "labels' class values, with colours and class names); a detection task's "
                                        "boxes (a GeoPackage); a classification task's chip labels (a CSV)")
    pr.add_argument("input", help="RGB GeoTIFF (8-bit, or any dtype with --hr-scale / the task's own); or a list of "
                                  "scenes (a .txt of paths, a STAC ItemCollection .json); classification: a folder "
                                  "of chips, a chip, or a list of them")
    pr.add_argument("-o", "--output", required=True, help="output class map (a Cloud-Optimized GeoTIFF, atomic), or "
                                                          "boxes (.gpkg); for a list, a folder")
    pr.add_argument("--asset", help="a STAC list's HR asset (default: visual, image, or its only GeoTIFF)")
    pr.add_argument("--image2", help="change tasks: the scene's second date (any CRS / resolution)")
    pr.add_argument("--hr-scale2", metavar="max=VALUE|percentile=LO,HI",
                    help="change tasks: the second date's scaling (default: the task's, else --hr-scale)")
    pr.add_argument("--task", required=True, help="the .safetensors file `skysense-fast finetune` wrote")
    tile_args(pr)
    pr.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    pr.add_argument("--hr-scale", metavar="max=VALUE|percentile=LO,HI", help="override the task's HR scaling")
    pr.add_argument("--probabilities", metavar="FILE", help="also write the per-class probabilities (float32)")
    pr.add_argument("--score-threshold", type=float, default=0.05,
                    help="detection: the lowest score of a box written (the DIOR recipe's 0.05)")
    pr.add_argument("--threshold", type=float, default=0.5,
                    help="multi-label classification: the probability from which a chip takes a label")
    pr.add_argument("--progress", action="store_true")
    pr.add_argument("--resume", action="store_true", help="keep finished pieces in OUTPUT.parts/ and skip them "
                                                          "when rerun")
    pr.add_argument("--chunk-rows", type=int, default=256, help="output rows per piece (resumable / torchrun runs)")
    series_args(pr, band_order=None)
    ev = sub.add_parser("evaluate", help="score a fine-tuned task on labelled data; prints the metrics as JSON")
    ev.add_argument("--task", required=True, help="the .safetensors file `skysense-fast finetune` wrote")
    ev.add_argument("--image", help="segmentation / change: an HR GeoTIFF; temporal: the grid raster (e.g. the labels)")
    ev.add_argument("--labels", help="segmentation: its labels (class raster in any CRS, or a vector layer); "
                                     "detection: a vector layer whose features' bounding boxes are the objects")
    ev.add_argument("--image2", help="change tasks: the second date of --image")
    ev.add_argument("--hr-scale2", metavar="max=VALUE|percentile=LO,HI", help="change tasks: the second date's scaling")
    ev.add_argument("--label-field", default="class", help="vector labels: the integer class attribute")
    ev.add_argument("--chips", help="classification: a folder per class or a CSV of file,label; detection: a COCO JSON")
    ev.add_argument("--chip-dir", help="detection: the folder of the COCO --chips' images (default: the JSON's)")
    tile_args(ev)
    series_args(ev, band_order=None)
    return p


def check_common(args: argparse.Namespace) -> None:
    """What can be checked before any work starts: sizes, the device, the output path."""
    for name in ("batch_size", "tile", "chunk_rows", "size", "frames", "steps", "batch", "samples", "prototypes",
                 "scale"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    device = getattr(args, "device", None)
    if device is not None and str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA device is visible on this machine (use --device cpu)")
    out_dir = getattr(args, "out_dir", None)
    if out_dir is not None and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out-dir {out_dir} is a file; give a folder (it is created if missing)")
    overlap = getattr(args, "overlap", None)
    if overlap is not None and overlap < 0:
        raise InputError(f"--overlap must be >= 0, got {overlap}")
    output = getattr(args, "output", None)
    if output is not None:
        from skysense_fast.infer.scenes import is_scene_list

        to_folder = args.cmd == "save-pretrained" or (args.cmd in ("embed", "predict") and is_scene_list(args.input)
                                                      and not output.lower().endswith(".csv"))   # chip labels
        if to_folder:    # a folder of outputs
            if os.path.exists(output) and not os.path.isdir(output):
                raise InputError(f"-o {output} is a file; give a folder (it is created if missing)")
        elif os.path.isdir(output):
            raise InputError(f"-o {output} is a directory; give a file path")
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise InputError(f"-o {output}: the folder {parent} does not exist")
    for flag, given in (("s2", "s2_dates"), ("s1", "s1_dates")):
        if getattr(args, given, None) and not getattr(args, flag, None):
            raise InputError(f"--{flag}-dates given without --{flag}")

