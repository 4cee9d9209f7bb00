"""Temporal crop mapping: a task on Sentinel-2 / Sentinel-1 series alone, through the fusion
transformer and its date encoding to a class per pixel of the Sentinel grid; trained from a
config, a crop map from predict over a grid, bad input refused before any work."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import torch

from skysense_fast.cli import main
from skysense_fast.data.demo_data import write_crop_series
from skysense_fast.finetune import finetune, load_task
from skysense_fast.finetune.config import ConfigError, from_dict
from skysense_fast.finetune.task import TaskSpec, build_task_model
from skysense_fast.infer.predict import predict_scene


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    write_crop_series(str(root / "s2"), str(root / "crops.tif"), size=48)
    return root


def _raw(crops, out, **data):
    return {"model": {"name": "skysense-tiny"},
            "task": {"kind": "temporal", "name": "crops", "head_channels": 16,
                     "class_names": ["wheat", "maize", "sunflower", "grass"]},
            "data": {"labels": str(crops / "crops.tif"), "s2": str(crops / "s2"), "crop": 16, "block": 16,
                     "val_fraction": 0.25, **data},
            "optim": {"lr": 0.001, "warmup_steps": 2},
            "train": {"steps": 4, "batch_size": 2, "checkpoint_every": 0, "out_dir": str(out), "progress": False}}


@pytest.fixture(scope="module")
def trained(crops, tmp_path_factory):
    return finetune(from_dict(_raw(crops, tmp_path_factory.mktemp("crops_run"))))


def _series(T=3, B=2, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"s2": torch.randn(B, T, 10, h, w, generator=g), "doy_s2": torch.tensor([[40, 150, 260]] * B),
            "valid_s2": torch.ones(B, T, dtype=torch.bool)}


def test_the_temporal_head_reads_the_fused_map_of_the_dated_series():
    torch.manual_seed(0)
    task = build_task_model(TaskSpec("temporal", (1, 2, 3), ("a", "b", "c"), head_channels=8, inputs=("s2",))).eval()
    x = _series()
    with torch.no_grad():
        got = task(**x)
        torch.testing.assert_close(got, task.head(task.backbone(**x)["fused"]), rtol=0, atol=0)
        assert got.shape == (2, 3, 12, 10)                          # one logit map per class, on the series' grid
        later = task(**{**x, "doy_s2": x["doy_s2"] + 60})            # the same images on other days
    assert not torch.allclose(got, later, atol=1e-4)                # the dates matter (date encoding in the fusion)
    with pytest.raises(ValueError, match="trained on s2"):
        task(hr=torch.randn(2, 3, 64, 64))
    assert {"hr", "s1", "head_s1", "geo"} <= set(task.unused())     # no optimiser state for what it never reads
    assert not {"s2", "head_s2", "ctpe", "fusion"} & set(task.unused())   # ... and all it does read trains


def test_train_then_map_the_grid(crops, trained, tmp_path):
    assert trained["status"] == "done" and trained["validation"]["pixels"] > 0
    task = load_task(trained["weights"])
    assert task.spec.kind == "temporal" and task.spec.inputs == ("s2",)
    info = predict_scene(task, crops / "crops.tif", tmp_path / "map.tif", tile=24, overlap=8, s2=crops / "s2")
    assert info["shape"] == (1, 48, 48)
    with rasterio.open(tmp_path / "map.tif") as m, rasterio.open(crops / "crops.tif") as g:
        values = m.read(1)
        assert (m.crs, m.transform, m.shape) == (g.crs, g.transform, g.shape)
        assert set(np.unique(values)) <= {1, 2, 3, 4}
    # one window over the whole grid through the CLI: mostly the same classes as overlapping ones
    assert main(["predict", str(crops / "crops.tif"), "--s2", str(crops / "s2"), "-o", str(tmp_path / "one.tif"),
                 "--task", trained["weights"], "--tile", "48", "--overlap", "0"]) == 0
    with rasterio.open(tmp_path / "one.tif") as m:
        assert (m.read(1) == values).mean() > 0.9
    from skysense_fast.finetune.evaluate import evaluate_scene

    scores = evaluate_scene(task, str(crops / "crops.tif"), str(crops / "crops.tif"), tile=24, overlap=8,
                            s2=crops / "s2")
    labelled = int((rasterio.open(crops / "crops.tif").read(1) > 0).sum())
    assert scores["pixels"] == labelled and 0 <= scores["overall_accuracy"] <= 1   # every labelled pixel, once
    assert main(["evaluate", "--task", trained["weights"], "--image", str(crops / "crops.tif"), "--labels",
                 str(crops / "crops.tif"), "--s2", str(crops / "s2"), "--tile", "24", "--overlap", "8"]) == 0


def test_temporal_input_is_checked_before_any_work(crops, trained, tmp_path, capsys):
    for data, message in [({"s2": None}, r"data\.s2 and / or data\.s1 are required"),
                          ({"image": str(crops / "crops.tif")}, "no data.image"),
                          ({"crop": 4}, r"data\.crop must be >= 8")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(_raw(crops, tmp_path, **data))
    raw = _raw(crops, tmp_path)
    raw["task"]["extra"] = "fused"
    with pytest.raises(ConfigError, match="no extra map"):
        from_dict(raw)
    (tmp_path / "labels.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(ValueError, match="takes a class raster on the Sentinel grid"):
        finetune(from_dict(_raw(crops, tmp_path / "r", labels=str(tmp_path / "labels.geojson"))))
    base = ["predict", str(crops / "crops.tif"), "-o", str(tmp_path / "o.tif"), "--task", trained["weights"]]
    assert main(base) == 2 and "give exactly --s2" in capsys.readouterr().err
    assert main([*base, "--s2", str(crops / "s2"), "--image2", str(crops / "crops.tif")]) == 2
    assert "--image2 is the second date of a change task" in capsys.readouterr().err


class _PixelTask(torch.nn.Module):
    """A stand-in task whose logits at a pixel are that pixel's first three S2 bands of its
    first acquisition: the map predict writes must then be that, wherever the windows fall."""

    def __init__(self):
        super().__init__()
        from skysense_fast.data.normalisation import DEFAULT

        self.spec = TaskSpec("temporal", (5, 6, 7), ("a", "b", "c"), inputs=("s2",))
        self.normalisation, self.source_files = DEFAULT, ()

    def forward(self, s2, doy_s2, valid_s2):
        return s2[:, 0, :3] * 10


def test_windows_blend_into_the_map_of_one_read(crops, tmp_path):
    from skysense_fast.data.series import find_series, read_on_grid

    with rasterio.open(crops / "crops.tif") as g:   # a 37 x 29 subset grid: odd sizes, an offset origin
        profile = dict(g.profile, width=29, height=37, transform=g.transform * rasterio.Affine.translation(3, 5))
        grid = g.read(1)[5:42, 3:32]
    with rasterio.open(tmp_path / "grid.tif", "w", **profile) as d:
        d.write(grid[None])
        crs, transform = d.crs, d.transform
    x, _ = read_on_grid(find_series(crops / "s2"), 10, crs, transform, (37, 29), "s2")
    want = np.array([5, 6, 7])[x[0, :3].argmax(0)]
    for tile, overlap in ((16, 4), (10, 3), (8, 7), (29, 0), (64, 0)):
        predict_scene(_PixelTask(), tmp_path / "grid.tif", tmp_path / "m.tif", tile=tile, overlap=overlap,
                      s2=crops / "s2")
        with rasterio.open(tmp_path / "m.tif") as m:
            np.testing.assert_array_equal(m.read(1), want, err_msg=f"tile {tile}, overlap {overlap}")


def test_resumable_pieces_and_two_ranks_give_the_one_pass_map(crops, trained, tmp_path):
    """Resumable pieces (--resume) and a two-rank torchrun make the map one pass makes."""
    import shutil
    import subprocess
    import sys

    task = load_task(trained["weights"])
    kw = dict(tile=24, overlap=8, s2=crops / "s2")
    predict_scene(task, crops / "crops.tif", tmp_path / "one.tif", **kw)
    predict_scene(task, crops / "crops.tif", tmp_path / "pieces.tif", resume=True, chunk_rows=7, **kw)
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "pieces.tif") as b:
        one = a.read(1)
        np.testing.assert_array_equal(one, b.read(1))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "skysense_fast.cli", "predict", str(crops / "crops.tif"),
                        "--s2", str(crops / "s2"), "-o", str(tmp_path / "ranks.tif"), "--task", trained["weights"],
                        "--tile", "24", "--overlap", "8", "--chunk-rows", "10"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    with rasterio.open(tmp_path / "ranks.tif") as m:
        np.testing.assert_array_equal(one, m.read(1))


def test_resume_refuses_pieces_made_with_other_dates(crops, trained, tmp_path, monkeypatch):
    import dataclasses
    import datetime as dt

    from skysense_fast.data.series import series_input
    from skysense_fast.errors import InputError
    from skysense_fast.infer import runner

    task = load_task(trained["weights"])
    acq = series_input(crops / "s2")
    kw = dict(tile=24, overlap=8, resume=True, chunk_rows=7)

    def interrupted(*a, **k):   # the pieces are made, the join never happens: a run cut short
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "join_pieces", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_scene(task, crops / "crops.tif", tmp_path / "m.tif", s2=acq, **kw)
    monkeypatch.undo()
    later = [dataclasses.replace(a, date=a.date + dt.timedelta(days=30)) for a in acq]   # same files, other days
    with pytest.raises(InputError, match="differs in series"):
        predict_scene(task, crops / "crops.tif", tmp_path / "m.tif", s2=later, **kw)
    predict_scene(task, crops / "crops.tif", tmp_path / "m.tif", s2=acq, **kw)   # the same series resumes
    assert (tmp_path / "m.tif").exists() and not (tmp_path / "m.tif.parts").exists()


def test_export_a_temporal_task(trained, tmp_path):
    """The series, their days and validity as positional inputs; the program gives the task's logits."""
    out = tmp_path / "crops.pt2"
    assert main(["export", "--task", trained["weights"], "-o", str(out), "--size", "256", "--frames", "6"]) == 0
    task = load_task(trained["weights"])
    s2, doy = torch.randn(1, 6, 10, 8, 8), torch.tensor([[30, 90, 150, 200, 250, 300]])
    valid = torch.tensor([[True, True, False, True, True, True]])
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(s2, doy, valid),
                                   task(s2=s2, doy_s2=doy, valid_s2=valid), rtol=1e-4, atol=1e-4)
