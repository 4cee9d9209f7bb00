"""Pretraining on real imagery: samples cut from an HR GeoTIFF with its Sentinel series."""

import pytest
import torch

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402
from test_infer import write_scene, write_series  # noqa: E402

from skysense_fast.pretrain import ConfigError, from_dict, pretrain  # noqa: E402
from skysense_fast.pretrain.scenes import SceneDataset  # noqa: E402


@pytest.fixture
def scene(tmp_path):
    write_scene(tmp_path / "hr.tif", 256, 320)                         # UTM 33N, 0.5 m: 128 m x 160 m
    write_series(tmp_path / "s2", ["S2_20210301.tif", "S2_20210415.tif", "S2_20210601.tif"], 10, "EPSG:32633",
                 from_origin(499950, 5000050, 10, 10), (30, 30))
    write_series(tmp_path / "s1", ["S1_20210310.tif"], 2, "EPSG:32633", from_origin(499950, 5000050, 10, 10),
                 (30, 30), linear=True)
    return tmp_path


def test_scene_samples(scene):
    ds = SceneDataset(str(scene / "hr.tif"), str(scene / "s2"), str(scene / "s1"), grid=4, s2_frames=2, s1_frames=2)
    assert len(ds) == 2 * 2                                           # 128 px windows: 2 rows x 2 columns
    x = ds[3]
    assert x["hr"].shape == (3, 128, 128) and x["s2"].shape == (2, 10, 4, 4) and x["s1"].shape == (2, 2, 4, 4)
    assert x["doy_s2"].tolist() == [60, 152]                          # 2 of 3 acquisitions, evenly: first, last
    assert x["valid_s2"].tolist() == [True, True] and x["valid_s1"].tolist() == [True, False]  # padding frame
    assert (x["s1"][1] == 0).all() and torch.isfinite(x["s2"]).all()
    with rasterio.open(scene / "hr.tif") as d:
        from skysense_fast.data import scene_latlon

        lat, lon = scene_latlon(d, at=(128 + 64, 128 + 64))
    assert x["latlon"].tolist() == pytest.approx([lat, lon], abs=1e-4)
    with pytest.raises(ValueError, match="smaller than one sample"):
        SceneDataset(str(scene / "hr.tif"), str(scene / "s2"), str(scene / "s1"), grid=16)


def test_pretrain_on_scenes(scene):
    raw = {"model": {"name": "skysense-tiny"},
           "data": {"kind": "scenes", "hr": str(scene / "hr.tif"), "s2": str(scene / "s2"), "s1": str(scene / "s1"),
                    "grid": 4, "crop": 3, "s2_frames": 3, "s1_frames": 2, "min_frames": 1},
           "loss": {"out_dim": 32, "head_hidden": 32, "head_bottleneck": 16, "cma_dim": 16},
           "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 0, "out_dir": str(scene / "run"),
                     "device": "cpu", "progress": False}}
    res = pretrain(from_dict(raw))
    assert res["status"] == "done" and len(res["losses"]) == 2
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in res["losses"])
    raw["data"].pop("s1")
    with pytest.raises(ConfigError, match=r"data\.s1 is required"):
        from_dict(raw)
    raw["data"]["s1"] = str(scene / "missing")
    with pytest.raises(ConfigError, match=r"data\.s1: no such file"):
        from_dict(raw)


def test_manifest_of_scenes(scene):
    pytest.importorskip("yaml")
    from skysense_fast.pretrain.trainer import make_dataset

    (scene / "scenes.yaml").write_text("- {hr: hr.tif, s2: s2, s1: s1}\n- {hr: hr.tif, s2: s2, s1: s1}\n")
    raw = {"data": {"kind": "scenes", "manifest": str(scene / "scenes.yaml"), "grid": 4, "crop": 3},
           "train": {"device": "cpu"}}
    assert len(make_dataset(from_dict(raw))) == 2 * 4
    (scene / "bad.yaml").write_text("- {hr: hr.tif, s2: s2, s1: nowhere}\n")
    raw["data"]["manifest"] = str(scene / "bad.yaml")
    with pytest.raises(ConfigError, match=r"scene 0 s1: no such file"):
        from_dict(raw)
    raw["data"].update(manifest=str(scene / "scenes.yaml"), hr=str(scene / "hr.tif"))
    with pytest.raises(ConfigError, match="exclude each other"):
        from_dict(raw)


def test_scenes_that_are_not_8_bit_need_a_stated_scale(scene):
    """Pretraining scenes normalised uint16 / float rasters as if they were 0-255."""
    import pickle

    import numpy as np

    with rasterio.open(scene / "hr.tif") as d:
        img, profile = d.read(), dict(d.profile, dtype="uint16")
    with rasterio.open(scene / "hr16.tif", "w", **profile) as d:
        d.write(img.astype(np.uint16) * 40)
    args = (str(scene / "s2"), str(scene / "s1"))
    with pytest.raises(ValueError, match="holds uint16 values, not 8-bit RGB"):
        SceneDataset(str(scene / "hr16.tif"), *args, grid=4)
    ref = SceneDataset(str(scene / "hr.tif"), *args, grid=4)
    scaled = pickle.loads(pickle.dumps(SceneDataset(str(scene / "hr16.tif"), *args, grid=4, hr_scale="max=10200")))
    torch.testing.assert_close(scaled[1]["hr"], ref[1]["hr"])          # the same input; picklable for workers


def _raw(out, **data):
    return {"model": {"name": "skysense-tiny"},
            "data": {"grid": 4, "crop": 3, "s2_frames": 2, "s1_frames": 2, "min_frames": 1, **data},
            "loss": {"out_dim": 32, "head_hidden": 32, "head_bottleneck": 16, "cma_dim": 16},
            "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 0, "out_dir": str(out), "device": "cpu",
                      "progress": False}}


@pytest.mark.parametrize("modalities", [["hr"], ["s2"], ["hr", "s1"]])
def test_pretraining_on_a_subset_of_the_modalities(tmp_path, modalities):
    """Only the objectives that apply: distillation of the present modalities and the fused map,
    cross-modal alignment only between present ones; what no input reaches stays as it was."""
    from skysense_fast import models
    from skysense_fast.weights import load_weights

    res = pretrain(from_dict(_raw(tmp_path, kind="synthetic", samples=8, modalities=modalities)))
    assert res["status"] == "done"
    keys = set(res["losses"][0])
    for src in ("hr", "s2", "s1"):
        assert (f"{src}_pixel" in keys) == (src in modalities)
    assert "fused_image" in keys and all(torch.isfinite(torch.tensor(r["total"])) for r in res["losses"])
    assert (res["losses"][-1]["cma"] == 0) == (len(modalities) == 1)
    torch.manual_seed(0)                                     # the run's seed: its initial weights
    init = models.create("skysense-tiny")
    trained = models.create("skysense-tiny")
    load_weights(trained, res["weights"])
    for name in trained.unreached(modalities):               # never reached: exactly the initial weights
        for (k, a), (_, b) in zip(getattr(trained, name).state_dict().items(),
                                  getattr(init, name).state_dict().items(), strict=True):
            assert torch.equal(a, b), f"{name}.{k}"
    reached = "hr" if "hr" in modalities else "s2"
    assert not all(torch.equal(a, b) for a, b in zip(getattr(trained, reached).parameters(),
                                                    getattr(init, reached).parameters(), strict=True))
    # frozen, not merely gradient-free: no optimiser state, whatever the optimiser does with None grads
    from skysense_fast.pretrain.trainer import build_model
    from skysense_fast.train.optim import build_optimizer

    cfg = from_dict(_raw(tmp_path / "again", kind="synthetic", samples=8, modalities=modalities))
    student = build_model(cfg, torch.device("cpu"))
    optimised = {id(p) for g in build_optimizer(student, cfg.optim).param_groups for p in g["params"]}
    for name in student.backbone.unreached(modalities):
        for p in getattr(student.backbone, name).parameters():
            assert not p.requires_grad and id(p) not in optimised, name


def test_hr_only_pretraining_on_plain_images_without_a_crs(tmp_path):
    """Real aerial imagery often comes as PNG / JPEG: the location comes from the config."""
    import numpy as np

    img = (np.random.default_rng(0).random((3, 200, 260)) * 255).astype(np.uint8)
    with rasterio.open(tmp_path / "a.png", "w", driver="PNG", height=200, width=260, count=3, dtype="uint8") as d:
        d.write(img)
    raw = _raw(tmp_path / "run", kind="scenes", modalities=["hr"], hr=str(tmp_path / "a.png"), latlon=[44.9, -110.6])
    res = pretrain(from_dict(raw))
    assert res["status"] == "done" and all(torch.isfinite(torch.tensor(r["total"])) for r in res["losses"])
    ds = SceneDataset(str(tmp_path / "a.png"), grid=4, latlon=(44.9, -110.6))
    assert len(ds) == 2 and set(ds[0]) == {"hr", "latlon"} and ds[1]["latlon"].tolist() == pytest.approx([44.9, -110.6])
    from skysense_fast.data.geotiff import normalise_hr

    np.testing.assert_allclose(ds[1]["hr"].numpy(), normalise_hr(img[:, :128, 128:256]))   # the window, read once
    raw["data"].pop("latlon")
    with pytest.raises(ValueError, match="has no CRS: give its location as data.latlon"):
        pretrain(from_dict(raw))
    # a resume with other modalities cannot continue those checkpoints
    raw = _raw(tmp_path / "run2", kind="synthetic", samples=8, modalities=["hr"])
    raw["train"]["checkpoint_every"] = 1
    pretrain(from_dict(raw), stop_after=1)
    raw["data"]["modalities"] = ["hr", "s2"]
    with pytest.raises(ValueError, match="data.modalities"):
        pretrain(from_dict(raw))
    raw["data"]["modalities"] = ["hr"]
    assert pretrain(from_dict(raw))["status"] == "done"                 # the same subset resumes
    # a checkpoint from before data.modalities existed trained all three: it held the default
    import glob
    import json as _json

    raw = _raw(tmp_path / "run3", kind="synthetic", samples=8)
    raw["train"]["checkpoint_every"] = 1
    pretrain(from_dict(raw), stop_after=1)
    for state in glob.glob(str(tmp_path / "run3" / "checkpoints" / "step_*" / "trainer.json")):
        saved = _json.loads(open(state).read())
        del saved["config"]["data"]["modalities"]
        open(state, "w").write(_json.dumps(saved))
    raw["data"]["modalities"] = ["hr"]
    with pytest.raises(ValueError, match=r"data\.modalities: checkpoint \['hr', 's2', 's1'\]"):
        pretrain(from_dict(raw))


def test_modality_settings_are_checked(scene):
    hr, s2 = str(scene / "hr.tif"), str(scene / "s2")
    for data, message in [
        ({"kind": "scenes", "modalities": ["s2"], "s2": s2}, "pretraining on scenes needs hr"),
        ({"kind": "scenes", "modalities": ["hr"], "hr": hr, "s2": s2}, r"data\.s2 is given but data\.modalities"),
        ({"kind": "scenes", "modalities": ["hr", "s2"], "hr": hr}, r"data\.s2 is required"),
        ({"kind": "synthetic", "modalities": ["hr", "hr"]}, "data.modalities must be distinct names"),
        ({"kind": "synthetic", "modalities": ["rgb"]}, "data.modalities must be distinct names"),
        ({"kind": "synthetic", "modalities": []}, "data.modalities must be distinct names"),
    ]:
        with pytest.raises(ConfigError, match=message):
            from_dict(_raw(scene / "x", **data))
