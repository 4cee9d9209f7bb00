"""Object detection: Faster R-CNN + FPN over the HR stages (the head is torchvision's model, part
for part), boxes that turn with the image, scenes with vector boxes and COCO chips, trained from a
config, a GeoPackage of boxes from predict, COCO AP from evaluate, bad input refused early."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from skysense_fast.cli import main
from skysense_fast.finetune import finetune, from_dict, load_task
from skysense_fast.finetune.augment import d4_transform
from skysense_fast.finetune.boxes import d4_boxes, in_window
from skysense_fast.finetune.config import ConfigError
from skysense_fast.finetune.detection_data import CocoChips
from skysense_fast.finetune.task import TaskSpec, build_task_model

pyogrio = pytest.importorskip("pyogrio")
pytest.importorskip("pycocotools")


def _tiny_detector(seed=0):
    torch.manual_seed(seed)
    return build_task_model(TaskSpec("detection", (3, 7), ("car", "ship"), "skysense-tiny"))


def test_head_is_torchvision_faster_rcnn_part_for_part():
    """The task model's detections and losses equal torchvision's FasterRCNN built from the same
    modules (its resizing transform at scale 1, no normalisation): the head only re-wires it."""
    from collections import OrderedDict

    from torchvision.models.detection import FasterRCNN

    model = _tiny_detector()
    head = model.head

    class Body(torch.nn.Module):   # torchvision's backbone contract: images -> FPN maps, out_channels
        out_channels = 256

        def __init__(self):
            super().__init__()
            self.skysense, self.fpn = model.backbone, head.fpn

        def forward(self, x):
            return self.fpn(OrderedDict(zip("0123", model.backbone(hr=x)["hr_stages"], strict=True)))

    size = 96
    ref = FasterRCNN(Body(), rpn_anchor_generator=head.rpn.anchor_generator, rpn_head=head.rpn.head,
                     box_roi_pool=head.roi_heads.box_roi_pool, box_head=head.roi_heads.box_head,
                     box_predictor=head.roi_heads.box_predictor, min_size=size, max_size=size,
                     image_mean=[0.0] * 3, image_std=[1.0] * 3)
    ref.rpn, ref.roi_heads = head.rpn, head.roi_heads   # the same thresholds and sampling
    x = torch.randn(2, 3, size, size)
    model.eval(), ref.eval()
    with torch.no_grad():
        ours, theirs = model(x), ref(list(x))
    for a, b in zip(ours, theirs, strict=True):
        assert len(a["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert torch.equal(a["labels"] + 1, b["labels"])   # torchvision's 0 is the background
    targets = [{"boxes": torch.tensor([[10.0, 12, 50, 70], [60, 5, 90, 30]]), "labels": torch.tensor([0, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    model.train(), ref.train()
    model.backbone.eval()   # no drop-path draws: the random numbers left are the samplers'
    torch.manual_seed(1)
    for _ in x:   # what torchvision's transform draws to pick each image's training size
        torch.empty(1).uniform_()
    mine = model(x, targets=targets)
    torch.manual_seed(1)
    refs = ref(list(x), [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets])
    assert mine.keys() == refs.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], refs[k])
    sum(mine.values()).backward()
    assert model.backbone.hr.patch_embed.projection.weight.grad.abs().sum() > 0   # gradients reach the backbone


@pytest.mark.parametrize("k", range(8))
def test_boxes_turn_with_the_image(k):
    g = torch.Generator().manual_seed(k)
    h, w = 37, 53
    x0 = torch.randint(0, w - 10, (5,), generator=g).float()
    y0 = torch.randint(0, h - 10, (5,), generator=g).float()
    boxes = torch.stack([x0, y0, x0 + torch.randint(1, 10, (5,), generator=g), y0 + torch.randint(1, 10, (5,),
                                                                                                    generator=g)], 1)
    turned = d4_boxes(boxes, k, h, w)
    for b, t in zip(boxes.int().tolist(), turned.tolist(), strict=True):
        mask = torch.zeros(h, w)
        mask[b[1]:b[3], b[0]:b[2]] = 1
        m = d4_transform(mask, k)
        rows, cols = m.nonzero(as_tuple=True)
        assert t == [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
    with pytest.raises(ValueError, match="k must be in 0..7"):
        d4_boxes(boxes, 8, h, w)


def test_boxes_in_a_window_are_cut_and_kept_when_half_inside():
    boxes = np.array([[0, 0, 10, 10], [8, 0, 18, 10], [15, 0, 25, 10], [40, 40, 50, 50]], np.float64)
    cut, labels = in_window(boxes, np.arange(4), 10, 0, 20, 20)
    # box 0 lies outside, box 1 is 8/10 inside (kept, cut), box 2 whole, box 3 beyond
    assert labels.tolist() == [1, 2]
    assert cut.tolist() == [[0, 0, 8, 10], [5, 0, 15, 10]]


def _chips(root, n=6, size=64, seed=0):
    """PNG chips with bright squares (category 5) and dark ones (category 9), as a COCO JSON."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        img = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
        for j, (cat, value) in enumerate(((5, 250), (9, 5))):
            x, y = rng.integers(0, size - 24, 2)
            s = int(rng.integers(14, 24))
            img[y:y + s, x:x + s] = value
            anns.append({"id": 10 * i + j, "image_id": i, "bbox": [int(x), int(y), s, s], "category_id": cat,
                         "iscrowd": 0, "area": s * s})
        Image.fromarray(img).save(root / f"c{i}.png")
        images.append({"id": i, "file_name": f"c{i}.png", "width": size, "height": size})
    path = root / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 9, "name": "dark"}, {"id": 5, "name": "bright"}]}))
    return path


def _raw(**sections):
    raw = {"model": {"name": "skysense-tiny"}, "task": {"kind": "detection", "name": "det"},
           "data": {}, "optim": {"lr": 3e-4, "warmup_steps": 1},
           "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 0, "progress": False}}
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return raw


def test_coco_chips_train_evaluate_and_keep_their_category_ids(tmp_path):
    from skysense_fast.finetune.evaluate import evaluate_coco

    coco = _chips(tmp_path)
    data = CocoChips(str(coco))
    assert data.classes.values == (5, 9) and data.classes.class_names() == ["bright", "dark"]
    assert data[0]["boxes"].shape == (2, 4) and data[0]["labels"].tolist() == [0, 1]
    out = tmp_path / "run"
    result = finetune(from_dict(_raw(data={"chips": str(coco), "val_fraction": 0.34},
                                     train={"out_dir": str(out), "evaluate_every": 3})))
    assert result["status"] == "done" and result["weights"]
    val = result["validation"]
    assert val["images"] == 2 and val["boxes"] == 4 and 0 <= val["map_50"] <= 1
    task = load_task(out / "det.safetensors")
    assert task.spec.class_values == (5, 9) and task.spec.inputs == ("hr",)
    scores = evaluate_coco(task, str(coco), batch_size=3)
    assert scores["images"] == 6 and scores["boxes"] == 12 and set(scores["ap_50_per_class"]) <= {"bright", "dark"}
    # a hub-style folder names the task on its card; export refuses boxes (not a tensor program yet)
    assert main(["save-pretrained", "-o", str(tmp_path / "card"), "--task", str(out / "det.safetensors"),
                 "--license", "cc-by-4.0"]) == 0
    card = (tmp_path / "card" / "README.md").read_text()
    assert "  - object-detection" in card and "detection (Faster R-CNN with FPN)" in card
    assert load_task(tmp_path / "card").spec == task.spec
    assert main(["export", "--task", str(out / "det.safetensors"), "-o", str(tmp_path / "det.pt2")]) == 2


@pytest.mark.parametrize("case", ["not_json", "no_lists", "stray_category", "missing_image", "raster_labels",
                                  "linear_probe", "scene_and_chips", "class_weights", "unknown_image", "nan_box",
                                  "head_channels", "crop_on_chips", "names_on_chips", "sizes"])
def test_bad_detection_input_is_refused_before_training(tmp_path, case):
    coco = _chips(tmp_path, n=2)
    data, task, match = {"chips": str(coco)}, {}, None
    if case == "not_json":
        coco.write_text("{not json")
        match = "not a readable JSON"
    elif case == "no_lists":
        coco.write_text(json.dumps({"images": []}))
        match = "lists 'images', 'annotations' and 'categories'"
    elif case == "stray_category":
        data["val_chips"] = str(coco)
        raw = json.loads(coco.read_text())
        other = tmp_path / "other.json"
        raw["categories"].append({"id": 11, "name": "plane"})
        other.write_text(json.dumps(raw))
        data["val_chips"] = str(other)
        match = r"categories \[11\] are not among the task's classes"
    elif case == "missing_image":
        (tmp_path / "c1.png").unlink()
        match = "1 listed image"
    elif case == "raster_labels":
        data = {"image": str(tmp_path / "c0.png"), "labels": str(tmp_path / "c1.png")}
        match = "data.labels of a detection task is a vector layer"
    elif case == "linear_probe":
        task, match = {"mode": "linear_probe"}, "must be full or frozen"
    elif case == "scene_and_chips":
        data["image"], match = str(tmp_path / "c0.png"), "one of the two"
    elif case == "class_weights":
        task, match = {"class_weights": "balanced"}, "class_weights is for segmentation"
    elif case in ("unknown_image", "nan_box", "sizes"):
        raw = json.loads(coco.read_text())
        if case == "unknown_image":
            raw["annotations"][0]["image_id"], match = 99, "image_id 99, which 'images' does not list"
        elif case == "nan_box":
            raw["annotations"][0]["bbox"][2], match = float("nan"), "must be finite numbers"
        else:
            raw["images"][1]["width"], match = 80, "chips of 2 sizes"
        coco.write_text(json.dumps(raw))
    elif case == "head_channels":
        task, match = {"head_channels": 128}, "task.head_channels does not apply to a detection task"
    elif case == "crop_on_chips":
        data["crop"], match = 512, "data.crop does not apply to a detection task on COCO chips"
    else:
        task, match = {"class_names": ["a", "b"]}, "the categories name the classes"
    with pytest.raises((ValueError, ConfigError), match=match):
        finetune(from_dict(_raw(data=data, task=task, train={"out_dir": str(tmp_path / "run")})))
    assert not (tmp_path / "run" / "det.safetensors").exists()


def test_crowd_regions_are_not_trained_on_and_excuse_detections_in_evaluation(tmp_path):
    from skysense_fast.metrics import DetectionMetrics

    coco = _chips(tmp_path, n=2)
    raw = json.loads(coco.read_text())
    raw["annotations"].append({"id": 99, "image_id": 0, "bbox": [0, 0, 30, 30], "category_id": 5, "iscrowd": 1})
    coco.write_text(json.dumps(raw))
    sample = CocoChips(str(coco))[0]
    assert len(sample["boxes"]) == 2 and sample["crowd_boxes"].tolist() == [[0, 0, 30, 30]]
    truth = {k: sample[k] for k in ("boxes", "labels", "crowd_boxes", "crowd_labels")}
    found = {"boxes": torch.cat([sample["boxes"], torch.tensor([[2.0, 2, 28, 28]])]),
             "scores": torch.tensor([0.9, 0.8, 0.95]), "labels": torch.cat([sample["labels"], torch.tensor([0])])}
    scores = {}
    for crowd in (True, False):
        m = DetectionMetrics(["bright", "dark"])
        m.update([found], [truth if crowd else {k: truth[k] for k in ("boxes", "labels")}])
        scores[crowd] = m.compute()["map_50"]
    assert scores[True] == pytest.approx(1.0) and scores[False] < 1.0   # the box in the crowd region: no FP


def test_the_head_decodes_boxes_in_float32_under_bfloat16_autocast():
    model = _tiny_detector().eval()
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        found = model(x)[0]
    assert found["boxes"].dtype == torch.float32 and found["scores"].dtype == torch.float32
    assert len(found["boxes"]) and not torch.all(found["boxes"] == found["boxes"].round())   # not on a bf16 grid


def test_neighbouring_tiles_keep_one_box_of_an_object_and_distinct_objects_stay():
    from skysense_fast.infer.predict_boxes import _between_neighbours

    row = lambda x0, score, cls=0: [x0, 0, x0 + 40, 40, score, cls]  # noqa: E731
    found = {(0, 0): np.array([row(100, 0.9), row(0, 0.5)]),            # the object at 100 twice, one far off
             (0, 1): np.array([row(102, 0.8), row(101, 0.7, cls=1)]),   # ... and once as another class
             (1, 1): np.array([row(100, 0.9)])}                          # a tie: the later tile's goes
    kept = {at: _between_neighbours(found, at, 0.5) for at in found}
    assert kept[(0, 0)][:, 4].tolist() == [0.9, 0.5]
    assert kept[(0, 1)][:, 5].tolist() == [1.0]
    assert len(kept[(1, 1)]) == 0


def test_scene_validation_scores_what_each_window_shows(tmp_path):
    from rasterio.transform import from_origin

    from skysense_fast.finetune.detection_data import SceneDetectionData

    image = tmp_path / "scene.tif"
    with rasterio.open(image, "w", driver="GTiff", height=128, width=128, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 1, 1)) as f:
        f.write(np.full((3, 128, 128), 120, np.uint8))
    boxes = [(10, 10, 30, 30), (54, 10, 90, 30), (70, 70, 90, 90)]   # the second crosses x = 64
    layer = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
             "features": [{"type": "Feature", "properties": {"class": 1}, "geometry": {"type": "Polygon",
                           "coordinates": [[[500000 + x, 5000000 - y] for x, y in
                                            ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]]}}
                          for x0, y0, x1, y1 in boxes]}
    (tmp_path / "boxes.geojson").write_text(json.dumps(layer))
    data = SceneDetectionData(str(image), str(tmp_path / "boxes.geojson"), crop=32, block=64, val_fraction=0.5,
                              seed=0)
    assert data.classes.values == (1,) and data.boxes.tolist() == [list(map(float, b)) for b in boxes]
    assert data.split.val == ((0, 64), (64, 64))   # seed 0: the blocks right of x = 64 held out
    truths = {w: data.val_sample(w)["boxes"].tolist() for w in data.val_windows()}
    # the box crossing x = 64 counts in its held-out block as what it shows there (x 64..90), the one in the
    # training block (0, 0) not at all; every other window holds no truth
    assert {w: b for w, b in truths.items() if b} == {(0, 64, 32): [[0.0, 10.0, 26.0, 30.0]],
                                                     (64, 64, 32): [[6.0, 6.0, 26.0, 26.0]]}
    assert len(truths) == 8


def test_official_dior_recipe_builds_on_meta():
    from skysense_fast.config import parse, read_yaml
    from skysense_fast.finetune.config import FinetuneConfig
    from skysense_fast.train.optim import param_groups

    cfg = parse(FinetuneConfig, read_yaml("configs/finetune/dior-2b.yaml"))
    t = cfg.task
    assert t.kind == "detection" and len(t.class_names) == 20 and tuple(t.classes) == tuple(range(1, 21))
    spec = TaskSpec("detection", tuple(t.classes), tuple(t.class_names), cfg.model.name, mode=t.mode)
    model = build_task_model(spec, "meta")
    head = model.head
    assert head.in_channels == [352, 704, 1408, 2816]
    assert [b.out_channels for b in head.fpn.layer_blocks] == [256] * 4
    assert head.roi_heads.box_predictor.cls_score.out_features == 21   # 20 classes + background
    assert head.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert (head.roi_heads.score_thresh, head.roi_heads.nms_thresh, head.roi_heads.detections_per_img) == \
        (0.05, 0.5, 100)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.layer_decay, cfg.train.batch_size) == (1e-4, 0.05, 0.9, 8)
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.layer_decay)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[-1] == 1.0 and abs(scales[0] - 0.9 ** 24) < 1e-12
    assert all(g["lr_scale"] == 1.0 for g in groups if any(n.startswith("head.") for n in g["names"]))


def test_crown_detection_from_the_cli_writes_a_geopackage_of_boxes(crowns, tmp_path, capsys):
    """The real crowns: trained a few steps from the shipped config, boxes predicted over the
    whole image into a GeoPackage in its CRS, scored by evaluate; bad outputs refused."""
    image, _, vector = crowns
    out = tmp_path / "run"
    assert main(["finetune", "configs/finetune/crowns-detection-tiny.yaml", "--set", "train.steps=4",
                 "--set", "train.evaluate_every=0", "--set", f"train.out_dir={out}", "--set",
                 f"data.image={image}", "--set", f"data.labels={vector}", "--set", "train.progress=false"]) == 0
    task = out / "crowns-detection-tiny.safetensors"
    boxes = tmp_path / "crowns.gpkg"
    assert main(["predict", str(image), "-o", str(boxes), "--task", str(task), "--tile", "192", "--overlap", "64",
                 "--score-threshold", "0.0"]) == 0
    assert "boxes of 400 x 400 pixels" in capsys.readouterr().out
    meta, _, wkb, fields = pyogrio.raw.read(boxes, layer="detections")
    with rasterio.open(image) as ds:
        assert rasterio.crs.CRS.from_user_input(meta["crs"]) == ds.crs
        bounds = ds.bounds
    import shapely

    geoms = shapely.from_wkb(wkb)
    assert len(geoms) > 0 and list(meta["fields"]) == ["class", "class_name", "score"]
    assert set(fields[0].tolist()) == {2} and set(fields[1].tolist()) == {"tree crown"}
    scores = fields[2]
    assert np.all((scores >= 0) & (scores <= 1)) and np.all(np.diff(scores) <= 0)   # by score
    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    tol = 1e-6
    assert x0 >= bounds.left - tol and x1 <= bounds.right + tol and y0 >= bounds.bottom - tol and y1 <= bounds.top + tol
    assert main(["evaluate", "--task", str(task), "--image", str(image), "--labels", str(vector),
                 "--tile", "192", "--overlap", "64"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["boxes"] == 61 and 0 <= scores["map_50"] <= 1
    # a detection task writes boxes, nothing else; and never over an input
    assert main(["predict", str(image), "-o", str(tmp_path / "boxes.tif"), "--task", str(task)]) == 2
    assert "must end in .gpkg" in capsys.readouterr().err
    assert main(["predict", str(image), "-o", str(boxes), "--task", str(task), "--probabilities",
                 str(tmp_path / "p.tif")]) == 2
    assert "takes no --probabilities" in capsys.readouterr().err
