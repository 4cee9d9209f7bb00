"""Evaluation metrics of the downstream tasks, accumulated with torchmetrics.

Segmentation: one confusion matrix (``torchmetrics.classification.MulticlassConfusionMatrix``,
pixels with the ignore label left out) from which overall accuracy, per-class IoU, mIoU (over
the classes present in the labels or the predictions, as mmseg reports it), per-class and macro
F1 and Cohen's kappa follow. Scene classification: torchmetrics' accuracy, macro F1 and kappa
(single-label), or macro F1 and mean average precision (multi-label). ``compute()`` returns
plain floats, ready for ``metrics.json``.
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

__all__ = ["ClassificationMetrics", "SegmentationMetrics", "from_confusion"]


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
