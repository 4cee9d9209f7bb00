"""Evaluation of a trained task on labelled data: a scene (through ``predict``, so what is
scored is the class map or the boxes a user gets, seams and all) or chips."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from ..data.geotiff import open_raster
from ..data.labels import IGNORE_INDEX, is_vector, labels_on_grid, rasterize_labels
from ..errors import InputError
from ..metrics import ClassificationMetrics, DetectionMetrics, SegmentationMetrics
from .chips import ChipDataset
from .task import TaskModel


def evaluate_scene(task: TaskModel, image: str, labels: str, *, label_field: str = "class", rows: int = 1024,
                   **predict_kw) -> dict:
    """OA, mIoU, per-class IoU, F1 and kappa of the task's class map of ``image`` against
    ``labels`` (a class raster in any CRS or a vector layer), over the labelled pixels."""
    from rasterio.windows import Window

    from ..infer.predict import predict_scene

    classes = task.spec.classes
    names = classes.class_names()
    metrics = SegmentationMetrics(classes.num_classes, IGNORE_INDEX, names)
    with tempfile.TemporaryDirectory() as tmp:
        pred_path = os.path.join(tmp, "class_map.tif")
        predict_scene(task, image, pred_path, **predict_kw)
        with open_raster(image) as ds, open_raster(pred_path, what="class map") as pred:
            for y in range(0, ds.height, rows):
                window = Window(0, y, ds.width, min(rows, ds.height - y))
                # windows the labels do not reach score nothing (a scene labelled in part)
                truth = rasterize_labels(labels, ds, classes, label_field, window, must_overlap=False) \
                    if is_vector(labels) else labels_on_grid(labels, ds, classes, window, must_overlap=False)
                p = pred.read(1, window=window)
                valid = p != pred.nodata
                truth = np.where(valid, truth, IGNORE_INDEX)   # nodata input: not scored
                index = np.searchsorted(np.asarray(classes.values), np.where(valid, p, classes.values[0]))
                metrics.update(torch.from_numpy(index), torch.from_numpy(truth))
    result = metrics.compute()
    if result["pixels"] == 0:
        raise InputError(f"{labels} labels no pixel of {image} where it has data: nothing to evaluate")
    return result


def evaluate_chips(task: TaskModel, chips: str, batch_size: int = 16, device: str | torch.device = "cpu") -> dict:
    """Accuracy, macro F1 and kappa (or macro F1 and mAP for multi-label) on labelled chips."""
    spec = task.spec
    data = ChipDataset(chips, classes=spec.class_names, multi_label=spec.multi_label, stats=task.normalisation)
    metrics = ClassificationMetrics(len(spec.class_names), spec.multi_label, spec.class_names)
    task = task.eval().to(device)
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            items = [data[j] for j in range(i, min(i + batch_size, len(data)))]
            if len({tuple(x.shape) for x, _ in items}) > 1:
                raise InputError(f"{chips}: chips of several sizes in one batch; use --batch-size 1")
            x = torch.stack([x for x, _ in items]).to(device)
            metrics.update(task(x).cpu(), torch.stack([y for _, y in items]))
    return {**metrics.compute(), "chips": len(data)}


def evaluate_boxes(task: TaskModel, image: str, labels: str, *, label_field: str = "class", cell: int = 512,
                   **detect_kw) -> dict:
    """COCO box AP of the task's detections of ``image`` (as ``predict`` writes them) against the
    bounding boxes of ``labels``' features. The scene is scored in cells of ``cell`` pixels (a
    box, found or true, in the cell of its centre) so that COCO's 100 detections per image bound
    a cell, not the scene."""
    from ..infer.predict_boxes import detect_scene
    from .boxes import vector_boxes

    spec = task.spec
    found = detect_scene(task, image, **detect_kw)
    with open_raster(image) as ds:
        boxes, index, _ = vector_boxes(labels, label_field, ds, spec.classes)
        W = ds.width

    def cells(b: np.ndarray) -> np.ndarray:   # the cell of each box's centre, as one number
        col = ((b[:, 0] + b[:, 2]) / 2 // cell).astype(np.int64)
        return ((b[:, 1] + b[:, 3]) / 2 // cell).astype(np.int64) * (W // cell + 1) + col

    def by_cell(b: np.ndarray) -> dict[int, np.ndarray]:   # each box binned once: sorted, then split
        ids = cells(b)
        order = np.argsort(ids, kind="stable")
        keys, starts = np.unique(ids[order], return_index=True)
        return dict(zip(keys.tolist(), np.split(order, starts[1:]), strict=True)) if len(ids) else {}

    mine, truth = by_cell(found["boxes"]), by_cell(boxes)
    none = np.zeros(0, np.int64)
    metrics = DetectionMetrics(spec.classes.class_names())
    for k in sorted(mine.keys() | truth.keys()):   # cells with neither say nothing
        f, t = mine.get(k, none), truth.get(k, none)
        metrics.update([{"boxes": torch.from_numpy(found["boxes"][f]).float(),
                         "scores": torch.from_numpy(found["scores"][f]).float(),
                         "labels": torch.from_numpy(found["labels"][f]).long()}],
                       [{"boxes": torch.from_numpy(boxes[t]).float(), "labels": torch.from_numpy(index[t]).long()}])
    return {**metrics.compute(), "detections": int(len(found["scores"]))}


def evaluate_coco(task: TaskModel, annotations: str, images: str | None = None, batch_size: int = 4,
                  device: str | torch.device = "cpu") -> dict:
    """COCO box AP of a detection task on COCO-style chips (``images``: their folder)."""
    from .detection_data import CocoChips

    spec = task.spec
    data = CocoChips(annotations, images, spec.classes, stats=task.normalisation, what="--chips")
    metrics = DetectionMetrics(spec.classes.class_names())
    task = task.eval().to(device)
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            items = [data[j] for j in range(i, min(i + batch_size, len(data)))]
            if len({tuple(s["hr"].shape) for s in items}) > 1:
                raise InputError(f"{annotations}: chips of several sizes in one batch; use --batch-size 1")
            found = task(torch.stack([s["hr"] for s in items]).to(device))
            metrics.update([{k: v.cpu() for k, v in f.items()} for f in found], items)
    return metrics.compute()
