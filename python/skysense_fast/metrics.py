"""Evaluation metrics of the downstream tasks, accumulated with torchmetrics.

Segmentation: one confusion matrix (``torchmetrics.classification.MulticlassConfusionMatrix``,
pixels with the ignore label left out) from which overall accuracy, per-class IoU, mIoU (over
the classes present in the labels or the predictions, as mmseg reports it), per-class and macro
F1 and Cohen's kappa follow. Scene classification: torchmetrics' accuracy, macro F1 and kappa
(single-label), or macro F1 and mean average precision (multi-label). Detection: COCO's box AP
through torchmetrics' ``MeanAveragePrecision`` (the pycocotools backend: the evaluation mmdet's
``CocoDataset`` runs), mAP over IoU 0.5:0.95, at 0.5 (DIOR's headline number) and 0.75, by
object size, recall at 100, and AP at 0.5 per class. ``compute()`` returns plain floats, ready
for ``metrics.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from .errors import InputError

__all__ = ["ClassificationMetrics", "DetectionMetrics", "SegmentationMetrics", "from_confusion"]


def _names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise InputError(f"metrics: {len(class_names)} class names for {num_classes} classes")
    return [str(n) for n in class_names]


def from_confusion(cm: Tensor, class_names: Sequence[str]) -> dict:
    """OA, IoU, mIoU, F1 and kappa from a (C, C) confusion matrix (rows: truth, columns: prediction)."""
    cm = cm.double()
    total = cm.sum()
    tp, truth, pred = cm.diagonal(), cm.sum(1), cm.sum(0)
    union = truth + pred - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.nan)
    f1 = torch.where(present, 2 * tp / (truth + pred).clamp(min=1), torch.nan)
    oa = (tp.sum() / total).item() if total > 0 else float("nan")
    expected = (truth * pred).sum() / total**2 if total > 0 else torch.tensor(float("nan"))
    kappa = ((oa - expected) / (1 - expected)).item() if total > 0 and expected < 1 else float("nan")
    return {"overall_accuracy": oa, "miou": iou[present].mean().item() if present.any() else float("nan"),
            "f1_macro": f1[present].mean().item() if present.any() else float("nan"), "kappa": kappa,
            "iou": {n: v for n, v in zip(class_names, iou.tolist(), strict=True)},
            "f1": {n: v for n, v in zip(class_names, f1.tolist(), strict=True)}, "pixels": int(total.item())}


class SegmentationMetrics:
    """Streams (prediction, label) maps of class indices 0..num_classes-1; ``ignore_index``
    marks pixels without a label."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, class_names: Sequence[str] | None = None,
                 device: torch.device | str | None = None):
        if num_classes < 2:
            raise InputError(f"SegmentationMetrics: needs >= 2 classes, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = _names(num_classes, class_names)
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index,
                                                   validate_args=False).to(device or "cpu")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise InputError(f"SegmentationMetrics: prediction {tuple(pred.shape)} and labels {tuple(target.shape)} "
                             "differ in shape")
        bad = (target != self.ignore_index) & ((target < 0) | (target >= self.num_classes)) \
            if self.ignore_index is not None else (target < 0) | (target >= self.num_classes)
        if bad.any():
            raise InputError(f"SegmentationMetrics: labels outside 0..{self.num_classes - 1} "
                             f"(and not the ignore label {self.ignore_index})")
        self.confusion.update(pred.reshape(-1).long(), target.reshape(-1).long())

    def compute(self) -> dict:
        return from_confusion(self.confusion.compute(), self.class_names)

    def reset(self) -> None:
        self.confusion.reset()


class ClassificationMetrics:
    """Streams logits and targets: class indices (single-label) or (B, C) 0/1 (multi-label)."""

    def __init__(self, num_classes: int, multi_label: bool = False, class_names: Sequence[str] | None = None,
                 device: torch.device | str | None = None):
        self.multi_label, self.class_names = multi_label, _names(num_classes, class_names)
        metrics: dict[str, Metric | MetricCollection]   # what MetricCollection takes (dict is invariant)
        if multi_label:
            metrics = {"f1_macro": MultilabelF1Score(num_classes, average="macro"),
                       "map": MultilabelAveragePrecision(num_classes, average="macro")}
        else:
            metrics = {"overall_accuracy": MulticlassAccuracy(num_classes, average="micro"),
                       "f1_macro": MulticlassF1Score(num_classes, average="macro"),
                       "kappa": MulticlassCohenKappa(num_classes)}
        self.metrics = MetricCollection(metrics).to(device or "cpu")

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.metrics.update(logits.detach(), target.long() if not self.multi_label else target.int())

    def compute(self) -> dict:
        return {k: float(v) for k, v in self.metrics.compute().items()}

    def reset(self) -> None:
        self.metrics.reset()


class DetectionMetrics:
    """Streams per image ``{"boxes" (N, 4) xyxy, "scores", "labels"}`` predictions and
    ``{"boxes", "labels"}`` truths (class indices 0..C-1)."""

    KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")

    def __init__(self, class_names: Sequence[str], device: torch.device | str | None = None):
        try:
            from torchmetrics.detection import MeanAveragePrecision
            from torchmetrics.utilities.imports import _PYCOCOTOOLS_AVAILABLE
        except ImportError as e:
            raise InputError(f"detection metrics need torchmetrics' detection module: {e}") from None
        if not _PYCOCOTOOLS_AVAILABLE:
            raise InputError("detection metrics need pycocotools (pip install 'skysense-fast[detection]')")
        self.class_names, self.device = list(class_names), torch.device(device or "cpu")
        self.all = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools").to(device or "cpu")
        self.at_50 = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5],
                                          class_metrics=True, backend="pycocotools").to(device or "cpu")
        self.images = self.boxes = 0

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:
        """``targets`` may also hold ``crowd_boxes`` / ``crowd_labels``: regions COCO neither
        counts as objects to find nor holds detections in against a model."""
        preds = [{k: p[k].detach() for k in ("boxes", "scores", "labels")} for p in preds]
        truths = []
        for t in targets:
            boxes, labels = t["boxes"], t["labels"]
            crowd_boxes = t.get("crowd_boxes", boxes[:0])
            crowd_labels = t.get("crowd_labels", labels[:0])
            truths.append({"boxes": torch.cat([boxes, crowd_boxes]), "labels": torch.cat([labels, crowd_labels]),
                           "iscrowd": torch.cat([torch.zeros_like(labels), torch.ones_like(crowd_labels)])})
        for m in (self.all, self.at_50):
            m.update(preds, truths)
        self.images += len(targets)
        self.boxes += sum(len(t["labels"]) for t in targets)

    def compute(self) -> dict:
        res = self.all.compute()
        out: dict = {k: float(res[k]) for k in self.KEYS}
        at_50 = self.at_50.compute()
        per = at_50["map_per_class"].reshape(-1).tolist()
        present = at_50["classes"].reshape(-1).tolist()
        # classes without a truth or a prediction are absent from COCO's table (-1 there): not given
        out["ap_50_per_class"] = {self.class_names[int(c)]: float(v) for c, v in zip(present, per, strict=True)
                                  if v >= 0}
        # on this rank's device: NCCL reduces CUDA tensors only (pycocotools' results are on the CPU)
        counts = torch.tensor([self.images, self.boxes], dtype=torch.int64, device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():   # as torchmetrics syncs
            torch.distributed.all_reduce(counts)
        out["images"], out["boxes"] = int(counts[0]), int(counts[1])
        return out

    def reset(self) -> None:
        self.all.reset()
        self.at_50.reset()
        self.images = self.boxes = 0
