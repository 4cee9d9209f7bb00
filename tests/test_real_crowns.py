"""Real data: tree-crown segmentation on deepforest's OSBS_029 (a georeferenced 10 cm NEON image
with 61 annotated crowns, from the deepforest 2.1.0 wheel on PyPI). Uses the sample ``make
sample`` prepares, else fetches the wheel with pip (the ``crowns`` fixture of conftest.py);
skipped only where the registry cannot be reached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio

from skysense_fast.data import sample


def test_hr_only_pretraining_on_the_real_neon_images(crowns, tmp_path):
    """The shipped HR-only config on its real, unlabelled NEON PNGs (no CRS; located by the
    manifest): a few steps run, the loss stays finite, and the weights start a crown task."""
    from skysense_fast.finetune import finetune, from_dict
    from skysense_fast.pretrain import load_config, pretrain

    manifest = crowns[0].parent / "neon" / "manifest.yaml"
    config = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "neon-hr-tiny.yaml"
    cfg = load_config(config,
                      {"data.manifest": str(manifest), "train.steps": 4, "train.batch_size": 4,
                       "train.out_dir": str(tmp_path / "pre"), "train.checkpoint_every": 0, "train.progress": False})
    res = pretrain(cfg, resume=False)
    assert res["status"] == "done" and all(np.isfinite(r["total"]) for r in res["losses"])
    assert set(res["losses"][0]) >= {"hr_pixel", "fused_image"} and "s2_pixel" not in res["losses"][0]
    image, raster, _ = crowns
    probe = {"model": {"name": "skysense-tiny", "weights": res["weights"]},
             "task": {"kind": "segmentation", "name": "probe", "mode": "linear_probe"},
             "data": {"image": str(image), "labels": str(raster), "crop": 128, "block": 128},
             "train": {"steps": 2, "batch_size": 2, "out_dir": str(tmp_path / "probe"), "checkpoint_every": 0,
                       "progress": False}}
    out = finetune(from_dict(probe))
    assert out["status"] == "done" and out["validation"]["pixels"] > 0


def test_crowns_raster_and_vector_agree(crowns):
    from skysense_fast.data.labels import ClassMap, rasterize_labels

    image, raster, vector = crowns
    layer = json.loads(vector.read_text())
    assert len(layer["features"]) == 61
    with rasterio.open(image) as img, rasterio.open(raster) as lab:
        assert (lab.crs, lab.transform, lab.shape) == (img.crs, img.transform, img.shape)
        grid = lab.read(1)
        idx = rasterize_labels(vector, img, ClassMap((sample.BACKGROUND, sample.CROWN)), "class")
    crown = grid == sample.CROWN
    assert 0.3 < crown.mean() < 0.8
    np.testing.assert_array_equal(idx >= 0, crown)   # the polygons cover exactly the rasterised boxes


def test_crown_segmentation_learns_on_held_out_blocks(crowns, tmp_path):
    from skysense_fast.finetune import finetune, from_dict, load_task
    from skysense_fast.infer.predict import predict_scene

    image, raster, _ = crowns
    raw = {"model": {"name": "skysense-tiny"},
           "task": {"kind": "segmentation", "name": "crowns", "head_channels": 32,
                    "class_names": ["background", "crown"]},
           "data": {"image": str(image), "labels": str(raster), "crop": 128, "block": 128, "val_fraction": 0.25},
           "optim": {"lr": 1e-3, "warmup_steps": 3, "weight_decay": 0.01},
           "train": {"steps": 20, "batch_size": 4, "out_dir": str(tmp_path), "checkpoint_every": 0,
                     "progress": False}}
    result = finetune(from_dict(raw))
    val = result["validation"]
    # chance agreement is kappa 0; 20 CPU steps reach ~0.5 on the held-out 12.8 m blocks
    assert val["kappa"] > 0.2 and val["iou"]["crown"] > 0.4, val
    task = load_task(tmp_path / "crowns.safetensors")
    predict_scene(task, image, tmp_path / "map.tif", tile=128, overlap=32)
    with rasterio.open(tmp_path / "map.tif") as m:
        values = m.read(1)
    assert set(np.unique(values).tolist()) == {sample.BACKGROUND, sample.CROWN}
