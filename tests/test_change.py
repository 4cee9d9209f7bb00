"""Change detection between two dates of a scene: a siamese backbone, stage maps differenced,
the dense head on the differences; trained from a config, a change map from predict with two
scenes, bad input refused before training or prediction."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from skysense_fast.cli import main
from skysense_fast.data.demo_data import write_scene, write_second_date
from skysense_fast.finetune import finetune, load_task
from skysense_fast.finetune.config import ConfigError, from_dict
from skysense_fast.finetune.task import TaskSpec, build_task_model
from skysense_fast.infer.predict import predict_scene

SIZE = 256


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("change")
    write_scene(str(root / "t1.tif"), SIZE)
    write_second_date(str(root / "t2.tif"), str(root / "change.tif"), SIZE, buildings=10)
    return root


def _raw(pair, out, **data):
    return {"model": {"name": "skysense-tiny"},
            "task": {"kind": "change", "name": "chg", "head_channels": 16, "class_names": ["same", "changed"]},
            "data": {"image": str(pair / "t1.tif"), "image2": str(pair / "t2.tif"), "labels": str(pair / "change.tif"),
                     "crop": 64, "block": 64, "val_fraction": 0.25, **data},
            "optim": {"lr": 0.001, "warmup_steps": 2},
            "train": {"steps": 6, "batch_size": 2, "checkpoint_every": 0, "out_dir": str(out), "progress": False}}


@pytest.fixture(scope="module")
def trained(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("chg_run")
    return finetune(from_dict(_raw(pair, out)))


def test_the_change_head_reads_the_differenced_stages():
    """The model is its definition: one backbone on both dates, |A - B| per stage, the head."""
    torch.manual_seed(0)
    task = build_task_model(TaskSpec("change", (1, 2), ("same", "changed"), head_channels=8,
                                     inputs=("hr", "hr2"))).eval()
    a, b = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        sa, sb = task.backbone(hr=a)["hr_stages"], task.backbone(hr=b)["hr_stages"]
        want = F.interpolate(task.head([(x - y).abs() for x, y in zip(sa, sb, strict=True)], None), size=(64, 96),
                             mode="bilinear", align_corners=False)
        got = task(a, hr2=b)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(task(b, hr2=a), got, rtol=1e-5, atol=1e-5)     # symmetric in the dates
    with pytest.raises(ValueError, match="trained on hr, hr2"):
        task(a)
    with pytest.raises(ValueError, match="differ in shape"):
        task(a, hr2=b[:, :, :32])


def test_train_then_predict_a_change_map_from_two_scenes(pair, trained, tmp_path):
    assert trained["status"] == "done" and trained["validation"]["pixels"] > 0
    task = load_task(trained["weights"])
    assert task.spec.kind == "change" and task.spec.inputs == ("hr", "hr2")
    info = predict_scene(task, pair / "t1.tif", tmp_path / "map.tif", tile=128, overlap=32, image2=pair / "t2.tif")
    assert info["classes"] == [1, 2]
    with rasterio.open(tmp_path / "map.tif") as m, rasterio.open(pair / "t1.tif") as src:
        labels = m.read(1)
        assert m.crs == src.crs and m.transform == src.transform and set(np.unique(labels)) <= {1, 2}
        assert m.tags(1)["CLASS_2"] == "changed"
    # the same through the CLI, and dates swapped give the same map (|A - B|)
    assert main(["predict", str(pair / "t2.tif"), "--image2", str(pair / "t1.tif"), "-o", str(tmp_path / "swap.tif"),
                 "--task", trained["weights"], "--tile", "128", "--overlap", "32"]) == 0
    with rasterio.open(tmp_path / "swap.tif") as m:
        assert (m.read(1) == labels).mean() > 0.999
    assert main(["evaluate", "--task", trained["weights"], "--image", str(pair / "t1.tif"), "--image2",
                 str(pair / "t2.tif"), "--labels", str(pair / "change.tif"), "--tile", "128"]) == 0


def test_change_input_is_checked_before_any_work(pair, trained, tmp_path, capsys):
    for data, message in [({"image2": None}, r"data\.image2 is required for change"),
                          ({"image2": str(tmp_path / "none.tif")}, r"data\.image2: no such file")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(_raw(pair, tmp_path, **data))
    raw = _raw(pair, tmp_path)
    raw["task"]["extra"] = "fused"
    with pytest.raises(ConfigError, match="compares two HR dates"):
        from_dict(raw)
    raw = _raw(pair, tmp_path)
    raw["task"]["kind"] = "segmentation"
    with pytest.raises(ConfigError, match=r"data\.image2 / data\.hr_scale2 are the second date of a change task"):
        from_dict(raw)
    far = tmp_path / "far.tif"
    with rasterio.open(pair / "t2.tif") as d:
        profile, img = d.profile, d.read()
    profile["transform"] = rasterio.transform.from_origin(600000, 4000000, 0.5, 0.5)
    with rasterio.open(far, "w", **profile) as d:
        d.write(img)
    with pytest.raises(ValueError, match="does not overlap"):
        finetune(from_dict(_raw(pair, tmp_path / "run", image2=str(far))))
    task = trained["weights"]
    base = ["predict", str(pair / "t1.tif"), "-o", str(tmp_path / "o.tif"), "--task", task]
    assert main(base) == 2 and "give --image2" in capsys.readouterr().err
    assert main([*base, "--image2", str(far)]) == 2 and "does not overlap" in capsys.readouterr().err
    assert main([*base, "--image2", str(pair / "t1.tif"), "-o", str(pair / "t1.tif")]) == 2
    assert "is an input of this run" in capsys.readouterr().err


def test_a_second_date_of_another_grid_and_part_of_the_scene(pair, trained, tmp_path):
    """The second date at 1 m (the first is 0.5 m) covering only the east of the scene: it is
    resampled onto the first's grid, and where it has no data the change map has none either."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    with rasterio.open(pair / "t2.tif") as src:
        east = src.bounds.left + 0.4 * (src.bounds.right - src.bounds.left)
        transform = rasterio.transform.from_origin(east, src.bounds.top, 1.0, 1.0)
        width, height = int((src.bounds.right - east) // 1.0), int((src.bounds.top - src.bounds.bottom) // 1.0)
        coarse = np.zeros((3, height, width), np.uint8)
        reproject(rasterio.band(src, [1, 2, 3]), coarse, dst_transform=transform, dst_crs=src.crs,
                  resampling=Resampling.average)
        profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=src.crs,
                       transform=transform, nodata=0)
    with rasterio.open(tmp_path / "t2_1m.tif", "w", **profile) as d:
        d.write(coarse)
    out = tmp_path / "map.tif"
    predict_scene(load_task(trained["weights"]), pair / "t1.tif", out, tile=128, overlap=32,
                  image2=tmp_path / "t2_1m.tif")
    with rasterio.open(out) as m:
        labels, nodata = m.read(1), m.nodata
    west = int(0.4 * SIZE) - 2                      # columns the second date does not reach
    assert (labels[:, :west] == nodata).all()       # no change input: no answer
    assert (labels[:, west + 8:-4] != nodata).all() and set(np.unique(labels[:, west + 8:-4])) <= {1, 2}
    # and training on that pair learns from the covered part only
    res = finetune(from_dict(_raw(pair, tmp_path / "run", image2=str(tmp_path / "t2_1m.tif"))))
    assert res["status"] == "done" and 0 < res["validation"]["pixels"]


def test_export_a_change_task(trained, tmp_path):
    """Both dates as positional inputs; the exported program gives the task's logits."""
    out = tmp_path / "chg.pt2"
    assert main(["export", "--task", trained["weights"], "-o", str(out), "--size", "64"]) == 0
    task = load_task(trained["weights"])
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(a, b), task(a, hr2=b), rtol=1e-4, atol=1e-4)


def test_a_second_date_of_another_dtype_takes_its_own_scaling(pair, trained, tmp_path, capsys):
    """A 16-bit second date (the 8-bit one x 40) beside an 8-bit first: refused until its own
    scaling is given, then the map is the 8-bit pair's."""
    with rasterio.open(pair / "t2.tif") as d:
        profile, img = dict(d.profile, dtype="uint16"), d.read().astype(np.uint16) * 40
    with rasterio.open(tmp_path / "t2_16bit.tif", "w", **profile) as d:
        d.write(img)
    base = ["predict", str(pair / "t1.tif"), "--task", trained["weights"], "--tile", "128", "--overlap", "32"]
    assert main([*base, "--image2", str(tmp_path / "t2_16bit.tif"), "-o", str(tmp_path / "a.tif")]) == 2
    assert "not 8-bit RGB: say how they map to 0-255 with --hr-scale2 max=VALUE" in capsys.readouterr().err
    assert main([*base, "--image2", str(tmp_path / "t2_16bit.tif"), "--hr-scale2", "max=10200",
                 "-o", str(tmp_path / "a.tif")]) == 0
    assert main([*base, "--image2", str(pair / "t2.tif"), "-o", str(tmp_path / "b.tif")]) == 0
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert (a.read(1) == b.read(1)).mean() > 0.999
    raw = _raw(pair, tmp_path)
    raw["task"]["kind"] = "segmentation"
    raw["data"].pop("image2")
    raw["data"]["hr_scale2"] = "max=10200"
    with pytest.raises(ConfigError, match=r"data\.image2 / data\.hr_scale2 are the second date"):
        from_dict(raw)


def test_a_second_date_pixel_with_nodata_in_one_band_is_a_hole(tmp_path):
    """As on the first date (nodata_mask): the nodata value in any band makes a hole, not only in all."""
    from rasterio.transform import from_origin

    from skysense_fast.data.geotiff import nodata_mask, read_second_date

    a = np.full((3, 8, 8), 100, np.uint8)
    a[1, 2, 3] = 0   # band 2 only
    a[:, 5, 5] = 0   # every band
    t = from_origin(500000, 5000000, 1, 1)
    with rasterio.open(tmp_path / "t2.tif", "w", driver="GTiff", height=8, width=8, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=t, nodata=0) as f:
        f.write(a)
    x, gap = read_second_date(str(tmp_path / "t2.tif"), rasterio.crs.CRS.from_epsg(32633), t, 8, 8)
    assert np.array_equal(gap, nodata_mask(a, 0)) and np.argwhere(gap).tolist() == [[2, 3], [5, 5]]
    assert np.all(x[:, gap] == 0) and np.isfinite(x).all() and np.all(x[:, ~gap] != 0)
