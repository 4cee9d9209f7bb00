"""Fine-tuning end to end on generated data: configs, bad input before training, the modes,
exact resume, the task file, and the class map ``predict`` writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from skysense_fast.cli import main
from skysense_fast.config import ConfigError, parse
from skysense_fast.data.demo_data import write_chips, write_scene
from skysense_fast.data.labels import IGNORE_INDEX
from skysense_fast.errors import InputError
from skysense_fast.finetune import FinetuneConfig, TaskSpec, build_task_model, finetune, from_dict, load_config, \
    load_task, read_task_spec
from skysense_fast.finetune.trainer import class_weights
from skysense_fast.infer.predict import predict_scene

SIZE = 256


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_scene(str(root / "scene.tif"), SIZE, str(root / "labels.tif"))
    write_chips(str(root / "chips"), SIZE, chip=32)
    return root


def _raw(demo, out, **sections):
    raw = {"model": {"name": "skysense-tiny"},
           "task": {"kind": "segmentation", "name": "seg", "head_channels": 16},
           "data": {"image": str(demo / "scene.tif"), "labels": str(demo / "labels.tif"), "crop": 64, "block": 64},
           "optim": {"lr": 1e-3, "warmup_steps": 1},
           "train": {"steps": 3, "batch_size": 2, "out_dir": str(out), "checkpoint_every": 0, "progress": False}}
    for key, value in sections.items():
        section, _, name = key.partition("__")
        raw[section][name] = value
    return raw


def _cfg(demo, out, **sections) -> FinetuneConfig:
    return from_dict(_raw(demo, out, **sections))


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg")
    result = finetune(_cfg(demo, out))
    return out, result


def test_configs_reject_unknown_fields_and_wrong_types_by_name(demo, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown field task\.head_chanels"):
        from_dict(_raw(demo, tmp_path, task__head_chanels=3))
    with pytest.raises(ConfigError, match=r"optim\.lr must be a number"):
        from_dict(_raw(demo, tmp_path, optim__lr="fast"))
    with pytest.raises(ConfigError, match=r"task\.classes\[1\] must be an integer"):
        from_dict(_raw(demo, tmp_path, task__classes=[1, "b"]))
    with pytest.raises(ConfigError, match=r"task\.mode must be one of"):
        from_dict(_raw(demo, tmp_path, task__mode="half"))
    with pytest.raises(ConfigError, match=r"data\.image is required"):
        from_dict(_raw(demo, tmp_path, data__image=None))


def test_shipped_configs_parse_and_set_overrides():
    from skysense_fast.config import read_yaml

    for name in ("segmentation-tiny", "classification-tiny", "crowns-tiny", "change-tiny", "crowns-detection-tiny",
                 "dior-2b", "isaid-2b"):
        # field and type checks (the data need not exist here)
        cfg = parse(FinetuneConfig, read_yaml(f"configs/finetune/{name}.yaml", {"train.steps": 7}))
        assert cfg.train.steps == 7
    assert (cfg.optim.lr, cfg.optim.layer_decay, cfg.data.crop, cfg.task.head_channels) == (6e-5, 0.9, 896, 512)


def test_official_isaid_recipe_builds_on_meta():
    from skysense_fast.config import read_yaml
    from skysense_fast.train.optim import param_groups

    cfg = parse(FinetuneConfig, read_yaml("configs/finetune/isaid-2b.yaml"))
    t = cfg.task
    spec = TaskSpec("segmentation", tuple(t.classes), tuple(t.class_names), cfg.model.name, mode=t.mode,
                    head_channels=t.head_channels, dropout=t.dropout)
    model = build_task_model(spec, "meta")
    assert model.head.in_channels == [352, 704, 1408, 2816]
    assert model.head.conv_seg.out_channels == 16 and model.head.bottleneck.conv.out_channels == 512
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and abs(scales[0] - 0.9 ** 24) < 1e-12   # the Swin's 24 blocks, embedding below
    head = {n for g in groups for n in g["names"] if n.startswith("head.")}
    assert head and all(g["lr_scale"] == 1.0 for g in groups if set(g["names"]) & head)


def _image(path, bands=3, crs="EPSG:32633", origin=(500000, 5000000), size=SIZE, nodata=None, fill=None):
    data = np.random.default_rng(0).integers(0, 255, (bands, size, size), dtype=np.uint8) if fill is None else fill
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=bands, dtype="uint8", crs=crs,
                       transform=from_origin(*origin, 0.5, 0.5), nodata=nodata) as f:
        f.write(data)


@pytest.mark.parametrize("case", ["labels_elsewhere", "more_classes", "batch_of_one", "one_band", "no_crs_resolution",
                                  "no_val_block"])
def test_bad_input_is_refused_before_training(demo, tmp_path, case):
    out = tmp_path / "run"
    kw, match = {}, None
    if case == "labels_elsewhere":
        _image(tmp_path / "far.tif", bands=1, origin=(600000, 5100000))
        kw, match = {"data__labels": str(tmp_path / "far.tif")}, "does not overlap the image"
    elif case == "more_classes":
        kw, match = {"task__classes": [1, 2, 3]}, r"class values \[4, 5, 6\] that are not among the 3 configured"
    elif case == "batch_of_one":
        kw, match = {"train__batch_size": 1}, "must be >= 2 per rank for UPerNet"
    elif case == "one_band":
        _image(tmp_path / "gray.tif", bands=1)
        kw, match = {"data__image": str(tmp_path / "gray.tif")}, "has 1 band"
    elif case == "no_crs_resolution":
        wkt = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
        with rasterio.open(tmp_path / "local.tif", "w", driver="GTiff", height=8, width=8, count=1, dtype="uint8",
                           crs=rasterio.crs.CRS.from_wkt(wkt), transform=from_origin(0, 8, 1, 1)) as f:
            f.write(np.arange(64, dtype=np.uint8).reshape(1, 8, 8) % 2 + 1)
        kw, match = {"data__labels": str(tmp_path / "local.tif")}, "cannot be put onto the image"
    else:
        kw, match = {"data__block": SIZE, "data__crop": 64}, "need two"
    with pytest.raises(InputError, match=match):
        finetune(_cfg(demo, out, **kw))
    assert not (out / "checkpoints").exists()   # refused before anything ran


def test_segmentation_learns_and_writes_task_and_metrics(trained):
    out, result = trained
    assert result["status"] == "done" and result["weights"] == str(out / "seg.safetensors")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 3 and set(metrics["iou"]) == {str(v) for v in range(1, 7)}
    assert 0 <= metrics["miou"] <= 1 and metrics["pixels"] > 0
    spec = read_task_spec(out / "seg.safetensors")
    assert spec.class_values == (1, 2, 3, 4, 5, 6) and spec.kind == "segmentation"


def test_class_map_in_label_values_with_nodata_colours_names(demo, trained, tmp_path):
    out, _ = trained
    task = load_task(out / "seg.safetensors")
    with rasterio.open(demo / "scene.tif") as f:
        img, profile = f.read(), f.profile
    img[:, :40, :40] = 0                                  # a nodata corner
    src = tmp_path / "holes.tif"
    with rasterio.open(src, "w", **dict(profile, nodata=0)) as f:
        f.write(img)
    dst = tmp_path / "map.tif"
    predict_scene(task, src, dst, tile=128, overlap=32, probabilities=tmp_path / "probs.tif")
    with rasterio.open(dst) as m, rasterio.open(src) as s:
        assert (m.crs, m.transform, m.shape, m.count, m.dtypes[0]) == (s.crs, s.transform, s.shape, 1, "uint8")
        a = m.read(1)
        assert m.nodata == 0 and (a[:40, :40] == 0).all()
        assert set(np.unique(a[40:, 40:]).tolist()) <= {1, 2, 3, 4, 5, 6}
        assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert m.colormap(1)[0][3] == 0 and m.colormap(1)[1][3] == 255
        assert json.loads(m.tags(1)["CLASS_NAMES"]) == {str(v): str(v) for v in range(1, 7)}
    with rasterio.open(tmp_path / "probs.tif") as p:
        probs = p.read()
    assert probs.shape == (6, SIZE, SIZE) and np.isnan(probs[:, :40, :40]).all()
    np.testing.assert_allclose(probs[:, 40:, 40:].sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(task.spec.class_values)[probs[:, 40:, 40:].argmax(0)], a[40:, 40:])


def test_class_map_overviews_keep_classes(tmp_path):
    """A map larger than one 256-px block gets overviews, made of class values (the mode),
    never blends of them."""
    from skysense_fast.data.labels import ClassMap
    from skysense_fast.infer.class_map import ClassMapSink

    profile = dict(driver="GTiff", height=600, width=600, crs="EPSG:32633", transform=from_origin(0, 600, 1, 1))
    sink = ClassMapSink(str(tmp_path / "m.partial"), profile, ClassMap((3, 7, 9)))
    probs = np.random.default_rng(0).random((3, 600, 600)).astype(np.float32)
    sink.write(0, probs)
    sink.finish(str(tmp_path / "m.tif"))
    with rasterio.open(tmp_path / "m.tif") as m:
        assert m.overviews(1) and m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert set(np.unique(m.read(1, out_shape=(150, 150))).tolist()) <= {3, 7, 9}
        np.testing.assert_array_equal(m.read(1), np.array([3, 7, 9])[probs.argmax(0)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif"]


def test_predict_resumable_pieces_equal_one_pass(demo, trained, tmp_path):
    task = load_task(trained[0] / "seg.safetensors")
    predict_scene(task, demo / "scene.tif", tmp_path / "a.tif", tile=128, overlap=32)
    predict_scene(task, demo / "scene.tif", tmp_path / "b.tif", tile=128, overlap=32, resume=True, chunk_rows=100)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert not (tmp_path / "b.tif.parts").exists()


def test_predict_refuses_to_overwrite_its_input(demo, trained, tmp_path):
    task = load_task(trained[0] / "seg.safetensors")
    from test_infer import write_series

    write_series(tmp_path / "s2", ["s2_20210301.tif"], 10, "EPSG:32633", from_origin(499990, 5000010, 10, 10), (16, 16))
    with pytest.raises(InputError, match="trained on hr: it takes no --s2"):
        predict_scene(task, demo / "scene.tif", tmp_path / "m.tif", s2=tmp_path / "s2")
    copy = tmp_path / "scene.tif"
    copy.write_bytes((demo / "scene.tif").read_bytes())
    with pytest.raises(InputError, match="is an input of this run"):
        predict_scene(task, copy, copy)


def test_resume_continues_exactly(demo, tmp_path):
    kw = dict(train__steps=4, train__checkpoint_every=2, task__classes=[1, 2, 3, 4, 5, 6])  # tuples survive JSON
    full = finetune(_cfg(demo, tmp_path / "a", **kw))
    part = finetune(_cfg(demo, tmp_path / "b", **kw), stop_after=2)
    assert part["status"] == "stopped"
    rest = finetune(_cfg(demo, tmp_path / "b", **kw))
    assert [r["step"] for r in rest["losses"]] == [2, 3]
    np.testing.assert_allclose([r["total"] for r in rest["losses"]], [r["total"] for r in full["losses"][2:]],
                               rtol=1e-5)
    a, b = load_task(tmp_path / "a" / "seg.safetensors"), load_task(tmp_path / "b" / "seg.safetensors")
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=n)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in lines if "total" in r) == [0, 1, 2, 3]   # no step logged twice


@pytest.mark.parametrize("mode", ["frozen", "linear_probe", "full"])
def test_modes_train_what_they_say(demo, tmp_path, mode):
    cfg = _cfg(demo, tmp_path, task__mode=mode, train__steps=2)
    torch.manual_seed(cfg.train.seed)
    spec = TaskSpec("segmentation", (1, 2, 3, 4, 5, 6), tuple("123456"), mode=mode, head_channels=16)
    before = build_task_model(spec).backbone.state_dict()
    finetune(cfg)
    after = load_task(tmp_path / "seg.safetensors")
    same = all(torch.equal(before[k], v) for k, v in after.backbone.state_dict().items())
    assert same == (mode != "full")
    assert type(after.head).__name__ == ("LinearSegmentationHead" if mode == "linear_probe" else "UPerNetHead")


def test_loss_ignores_unlabelled_pixels_and_is_zero_without_labels():
    spec = TaskSpec("segmentation", (1, 2, 3), ("a", "b", "c"), head_channels=8)
    model = build_task_model(spec)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, :2] = IGNORE_INDEX
    keep = target != IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    torch.testing.assert_close(model.loss(logits, target), ref)
    w = torch.tensor([0.5, 1.0, 2.0])
    ref_w = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep], weight=w)
    torch.testing.assert_close(model.loss(logits, target, w), ref_w)
    none = model.loss(logits, torch.full_like(target, IGNORE_INDEX))
    assert none.item() == 0.0
    none.backward()
    assert torch.isfinite(logits.grad).all()


def test_balanced_class_weights():
    w = class_weights(np.array([100, 300, 0, 600]))
    assert w[2] == 0 and abs(w[[0, 1, 3]].mean().item() - 1) < 1e-6
    assert w[0] / w[3] == pytest.approx(6.0)


def test_classification_on_chips_and_evaluate(demo, tmp_path):
    from skysense_fast.finetune.evaluate import evaluate_chips

    raw = _raw(demo, tmp_path, train__batch_size=4)
    raw["task"] = {"kind": "classification", "name": "cls", "mode": "linear_probe"}
    raw["data"] = {"chips": str(demo / "chips"), "val_fraction": 0.3}
    result = finetune(from_dict(raw))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"overall_accuracy", "f1_macro", "kappa"} <= set(metrics) and result["status"] == "done"
    task = load_task(tmp_path / "cls.safetensors")
    assert task.spec.kind == "classification" and task.spec.class_names == tuple(sorted(
        p.name for p in (demo / "chips").iterdir()))
    scores = evaluate_chips(task, str(demo / "chips"))
    assert 0 <= scores["overall_accuracy"] <= 1 and scores["chips"] == sum(1 for _ in (demo / "chips").rglob("*.png"))

    # predict labels the chips as a CSV: the same answers evaluate scores (its accuracy, recomputed)
    out = tmp_path / "labels.csv"
    assert main(["predict", str(demo / "chips"), "-o", str(out), "--task", str(tmp_path / "cls.safetensors"),
                 "--batch-size", "5"]) == 0
    import csv

    rows = list(csv.DictReader(out.open()))
    names = list(task.spec.class_names)
    assert len(rows) == scores["chips"] and {r["label"] for r in rows} <= set(names)
    for r in rows:
        p = [float(r[f"p_{n}"]) for n in names]
        assert abs(sum(p) - 1) < 1e-4 and float(r["probability"]) == max(p) and names[p.index(max(p))] == r["label"]
    right = sum(r["label"] == os.path.basename(os.path.dirname(r["file"])) for r in rows)
    assert right / len(rows) == pytest.approx(scores["overall_accuracy"], abs=1e-6)
    # the CSV reads back as a chips CSV (paths relative to it): scored on its own answers, all right
    assert evaluate_chips(task, str(out))["overall_accuracy"] == 1.0
    # a .txt list of the chips (names repeat across class folders: no output of their own, so allowed)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted((demo / "chips").rglob("*.png"))) + f"{rows[0]['file']}\n")   # relative: to the list
    assert main(["predict", str(listing), "-o", str(tmp_path / "again.csv"), "--task",
                 str(tmp_path / "cls.safetensors")]) == 0
    again = list(csv.DictReader((tmp_path / "again.csv").open()))
    assert [r["label"] for r in again] == [r["label"] for r in rows] + [rows[0]["label"]]
    assert main(["predict", str(demo / "chips"), "-o", str(tmp_path / "x.tif"), "--task",
                 str(tmp_path / "cls.safetensors")]) == 2
    assert main(["predict", str(demo / "chips"), "-o", str(out), "--task", str(tmp_path / "cls.safetensors"),
                 "--probabilities", str(tmp_path / "p.tif")]) == 2


def test_task_file_is_checked(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    path = trained[0] / "seg.safetensors"
    with pytest.raises(InputError, match="holds backbone weights but no task"):
        from skysense_fast import models
        from skysense_fast.weights import save_weights

        save_weights(models.create("skysense-tiny"), tmp_path / "backbone.safetensors")
        read_task_spec(tmp_path / "backbone.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    spec = json.loads(meta["skysense_task"])
    for bad, match in (({**spec, "format": 99}, "format 99"), ({**spec, "kind": 3}, "must be a string"),
                       ({**spec, "exec": "import os"}, "unknown field"), ({**spec, "mode": "half"}, "mode must be"),
                       ({**spec, "model_overrides": {"hr_embed_dim": 10**6}}, "do not match the task"),
                       ({**spec, "model_overrides": {"evil": 1}}, "with overrides"),
                       ({**spec, "class_values": [3, 1, 2, 4, 5, 6]}, "must be sorted")):
        save_file(load_file(path), tmp_path / "t.safetensors", metadata={**meta, "skysense_task": json.dumps(bad)})
        with pytest.raises(InputError, match=match):
            load_task(tmp_path / "t.safetensors")


def test_cli_finetune_then_predict(demo, tmp_path, capsys):
    from skysense_fast.cli import main

    cfg = tmp_path / "seg.yaml"
    import yaml

    raw = _raw(demo, tmp_path / "run")
    raw["train"]["steps"] = 2
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["finetune", str(cfg), "--set", "task.name=cli", "--out-dir", str(tmp_path / "run")]) == 0
    assert "finetune done at step 2" in capsys.readouterr().out
    task = tmp_path / "run" / "cli.safetensors"
    assert main(["predict", str(demo / "scene.tif"), "-o", str(tmp_path / "map.tif"), "--task", str(task),
                 "--tile", "128", "--overlap", "32"]) == 0
    assert main(["evaluate", "--task", str(task), "--image", str(demo / "scene.tif"), "--labels",
                 str(demo / "labels.tif"), "--tile", "128", "--overlap", "32"]) == 0
    scores = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert 0 <= scores["miou"] <= 1
    assert main(["finetune", str(cfg), "--set", "task.kind=detect"]) == 2
    assert "task.kind must be one of" in capsys.readouterr().err
    assert main(["predict", str(demo / "scene.tif"), "-o", str(tmp_path / "x.tif"), "--task",
                 str(demo / "labels.tif")]) == 2


def test_config_paths_relative_to_the_config(demo, tmp_path, monkeypatch):
    import yaml

    raw = _raw(demo, tmp_path / "run")
    raw["data"].update(image="scene.tif", labels="labels.tif")
    (demo / "rel.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)        # neither file is here: both are found beside the config
    cfg = load_config(demo / "rel.yaml", {"train.steps": 1})
    assert cfg.data.image == str(demo / "scene.tif") and cfg.train.steps == 1


def _torchrun(*argv):
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    r = subprocess.run([torchrun, "--nproc_per_node=2", "-m", "skysense_fast.cli", *map(str, argv)], check=False,
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_two_ranks_finetune_and_predict(demo, trained, tmp_path):
    """FSDP2 fine-tuning over two gloo ranks writes one task file; predict over two ranks
    writes the class map one process writes."""
    import yaml

    raw = _raw(demo, tmp_path / "run", train__steps=2, train__device="cpu", train__batch_size=4)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    _torchrun("finetune", tmp_path / "cfg.yaml")
    two = load_task(tmp_path / "run" / "seg.safetensors")
    one = load_task(trained[0] / "seg.safetensors")
    assert two.state_dict().keys() == one.state_dict().keys()
    scores = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert scores["step"] == 2
    assert scores["pixels"] == trained[1]["validation"]["pixels"]   # each window scored once, not once per rank
    _torchrun("predict", demo / "scene.tif", "-o", tmp_path / "two.tif", "--task", trained[0] / "seg.safetensors",
              "--tile", "128", "--overlap", "32", "--chunk-rows", "64")
    predict_scene(one, demo / "scene.tif", tmp_path / "one.tif", tile=128, overlap=32)
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "two.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert b.colormap(1) == a.colormap(1) and b.tags(1) == a.tags(1)


def test_hr_with_sentinel_series_through_the_fusion(demo, tmp_path):
    """Segmentation on HR + S2 + S1 series (read onto each crop's fusion grid, turned with it),
    joined through the fused map; predict then needs the same series."""
    from test_infer import write_series

    grid = from_origin(499990, 5000010, 10, 10)   # 10 m pixels over the 128 m scene, with a margin
    write_series(tmp_path / "s2", ["s2_20210301.tif", "s2_20210601.tif"], 10, "EPSG:32633", grid, (16, 16))
    write_series(tmp_path / "s1", ["s1_20210315.tif"], 2, "EPSG:32633", grid, (16, 16), linear=True)
    with pytest.raises(ConfigError, match="set task.extra to fused"):
        _cfg(demo, tmp_path / "x", data__s2=str(tmp_path / "s2"))
    cfg = _cfg(demo, tmp_path / "run", data__s2=str(tmp_path / "s2"), data__s1=str(tmp_path / "s1"),
               task__extra="fused", train__steps=2)
    result = finetune(cfg)
    assert result["status"] == "done"
    task = load_task(tmp_path / "run" / "seg.safetensors")
    assert task.spec.inputs == ("hr", "s2", "s1")
    trained = {n for n, p in task.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.s2.") for n in trained) and any(n.startswith("backbone.fusion.") for n in trained)
    with pytest.raises(InputError, match="give --s1, --s2"):
        predict_scene(task, demo / "scene.tif", tmp_path / "map.tif")
    predict_scene(task, demo / "scene.tif", tmp_path / "map.tif", tile=128, overlap=32, s2=tmp_path / "s2",
                  s1=tmp_path / "s1")
    with rasterio.open(tmp_path / "map.tif") as m:
        assert set(np.unique(m.read(1)).tolist()) <= {1, 2, 3, 4, 5, 6}
    # exported: hr, then each series with its days and validity, positional
    from skysense_fast.deploy import task_program

    module, example = task_program(task, 64, "seg", frames=2)
    assert [tuple(x.shape) for x in example] == [(1, 3, 64, 64), (1, 2, 10, 2, 2), (1, 2), (1, 2),
                                                 (1, 2, 2, 2, 2), (1, 2), (1, 2)]
    program = torch.export.export(module, example).module()
    hr, s2, d2, v2, s1, d1, v1 = example
    with torch.no_grad():
        torch.testing.assert_close(program(*example), task(hr, s2=s2, doy_s2=d2, valid_s2=v2, s1=s1, doy_s1=d1,
                                                           valid_s1=v1), rtol=1e-4, atol=1e-4)


def test_class_names_stay_with_their_values(demo):
    from skysense_fast.finetune.trainer import open_data

    cfg = _cfg(demo, "unused", task__classes=[6, 5, 4, 3, 2, 1], task__class_names=list("fedcba"))
    _, _, classes = open_data(cfg)
    assert classes.values == (1, 2, 3, 4, 5, 6) and classes.names == tuple("abcdef")


def test_edge_tiles_line_up_with_the_image():
    """An input that is not whole 32-pixel cells is zero-padded to them and the logits cut back:
    what a training crop beyond the scene's edge sees."""
    model = build_task_model(TaskSpec("segmentation", (1, 2, 3), ("a", "b", "c"), head_channels=8)).eval()
    x = torch.randn(1, 3, 100, 90)
    with torch.no_grad():
        out = model(x)
        padded = model(torch.nn.functional.pad(x, (0, 6, 0, 28)))
    assert out.shape == (1, 3, 100, 90)
    torch.testing.assert_close(out, padded[..., :100, :90])


def test_evaluate_a_scene_labelled_in_part(demo, trained, tmp_path):
    from skysense_fast.finetune.evaluate import evaluate_scene

    with rasterio.open(demo / "labels.tif") as f:
        lab, profile = f.read(), f.profile
    lab[:, SIZE // 2:] = 0                                # the lower half unlabelled (nodata)
    partial = tmp_path / "top.tif"
    with rasterio.open(partial, "w", **dict(profile, height=SIZE // 2)) as f:
        f.write(lab[:, :SIZE // 2])                       # a raster over the top half only
    task = load_task(trained[0] / "seg.safetensors")
    scores = evaluate_scene(task, str(demo / "scene.tif"), str(partial), rows=64, tile=128, overlap=32)
    assert 0 < scores["pixels"] <= (SIZE // 2) * SIZE


def test_outputs_never_replace_the_task_file(demo, trained, tmp_path, capsys):
    from skysense_fast.cli import main

    task = tmp_path / "t.safetensors"
    task.write_bytes((trained[0] / "seg.safetensors").read_bytes())
    with pytest.raises(InputError, match="is an input of this run"):
        predict_scene(load_task(task), demo / "scene.tif", task)
    assert main(["export", "--task", str(task), "-o", str(task)]) == 2
    assert "is an input of this run" in capsys.readouterr().err
    assert task.read_bytes() == (trained[0] / "seg.safetensors").read_bytes()


def test_non_square_chips_train(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "chips" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(tmp_path / "chips" / cls / f"{i}.png")
    raw = {"task": {"kind": "classification", "name": "c", "mode": "linear_probe"},
           "data": {"chips": str(tmp_path / "chips"), "val_fraction": 0.25},
           "train": {"steps": 3, "batch_size": 2, "out_dir": str(tmp_path / "run"), "checkpoint_every": 0,
                     "progress": False}}
    assert finetune(from_dict(raw))["status"] == "done"


def test_multi_label_chip_labels_are_the_classes_over_the_threshold(demo, tmp_path):
    import csv

    from skysense_fast.infer.predict_chips import classify_chips

    torch.manual_seed(0)
    task = build_task_model(TaskSpec("classification", (0, 1, 2), ("a", "b", "c"), multi_label=True,
                                     mode="linear_probe")).eval()
    info = classify_chips(task, demo / "chips", tmp_path / "l.csv", batch_size=3, threshold=0.5)
    rows = list(csv.DictReader((tmp_path / "l.csv").open()))
    assert info["chips"] == len(rows) > 0
    for r in rows:
        p = {n: float(r[f"p_{n}"]) for n in "abc"}
        chosen = [n for n in "abc" if p[n] >= 0.5]
        assert r["label"] == "|".join(chosen)
        assert float(r["probability"]) == pytest.approx(min(p[n] for n in chosen) if chosen else max(p.values()))
    with pytest.raises(InputError, match="must end in .csv"):
        classify_chips(task, demo / "chips", tmp_path / "l.txt")
    with pytest.raises(InputError, match="threshold must be in"):
        classify_chips(task, demo / "chips", tmp_path / "l.csv", threshold=1.5)
