"""Task metrics against torchmetrics' own definitions and hand-counted cases."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_cohen_kappa, multiclass_f1_score,
                                                    multiclass_jaccard_index)

from skysense_fast.metrics import ClassificationMetrics, SegmentationMetrics


def test_segmentation_metrics_match_torchmetrics_over_batches():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 17, 19), generator=g)
    pred = torch.where(torch.rand(3, 17, 19, generator=g) < 0.7, target, torch.randint(0, 4, (3, 17, 19), generator=g))
    m = SegmentationMetrics(4, class_names=["a", "b", "c", "d"])
    for i in range(3):  # streamed
        m.update(pred[i], target[i])
    r = m.compute()
    p, t = pred.flatten(), target.flatten()
    assert r["overall_accuracy"] == pytest.approx(multiclass_accuracy(p, t, 4, average="micro").item(), abs=1e-6)
    assert r["miou"] == pytest.approx(multiclass_jaccard_index(p, t, 4, average="macro").item(), abs=1e-6)
    per = multiclass_jaccard_index(p, t, 4, average="none")
    assert [r["iou"][n] for n in "abcd"] == pytest.approx(per.tolist(), abs=1e-6)
    assert r["f1_macro"] == pytest.approx(multiclass_f1_score(p, t, 4, average="macro").item(), abs=1e-6)
    assert r["kappa"] == pytest.approx(multiclass_cohen_kappa(p, t, 4).item(), abs=1e-6)
    assert r["pixels"] == t.numel()


def test_ignore_label_and_absent_classes():
    """Ignored pixels count nowhere; a class in neither labels nor predictions has no IoU
    (NaN) and stays out of the mean, as mmseg reports it."""
    target = torch.tensor([[0, 0, 255], [1, 1, 255]])
    pred = torch.tensor([[0, 1, 2], [1, 1, 0]])
    m = SegmentationMetrics(3, ignore_index=255)
    m.update(pred, target)
    r = m.compute()
    assert r["pixels"] == 4 and r["overall_accuracy"] == pytest.approx(0.75)
    assert r["iou"]["0"] == pytest.approx(0.5) and r["iou"]["1"] == pytest.approx(2 / 3) and math.isnan(r["iou"]["2"])
    assert r["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="labels outside 0..2"):
        m.update(pred, torch.tensor([[0, 3, 0], [1, 1, 0]]))


@pytest.mark.parametrize("multi_label", [False, True])
def test_classification_metrics(multi_label):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 5, generator=g)
    target = (torch.rand(40, 5, generator=g) > 0.5).int() if multi_label else logits.argmax(1)
    m = ClassificationMetrics(5, multi_label=multi_label)
    m.update(logits[:20], target[:20])
    m.update(logits[20:], target[20:])
    r = m.compute()
    if multi_label:
        assert set(r) == {"f1_macro", "map"} and 0 <= r["map"] <= 1
    else:
        assert r["overall_accuracy"] == pytest.approx(1.0) and r["kappa"] == pytest.approx(1.0)
