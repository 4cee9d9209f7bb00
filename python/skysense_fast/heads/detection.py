"""Faster R-CNN with FPN over the HR stages, from torchvision's detection parts.

The setting of SkySense's official DIOR recipe (mmdet 2.28 ``FasterRCNN`` on SwinV2-H, stages
0-3 of strides 4-32): FPN to 256 channels with a max-pooled fifth level (strides 4-64); RPN
anchors of one size per level (32 .. 512 px, 8 x the stride) at ratios 0.5 / 1 / 2, sampled
256 per image at IoU 0.7 / 0.3, 2000 / 1000 proposals before NMS (train / test) and 1000 after,
NMS 0.7; RoIAlign 7 x 7 on the four stride 4-32 levels (mmdet's and torchvision's level rule
agree: sqrt(area) / 56 px), two 1024-wide FCs, 512 RoIs per image at IoU 0.5, a quarter of
them positive, box deltas scaled 10 / 10 / 5 / 5; at test a score threshold of 0.05, class-wise
NMS 0.5 and at most 100 boxes per image.

Unlike torchvision's ``FasterRCNN`` the head takes the backbone's stage maps, not images: the
task model owns the backbone (its weights stay under ``backbone.``, loadable from SkySense's
files), and the images arrive normalised, batched and padded to whole 32-pixel cells, so no
resizing transform runs (boxes stay in the input's pixels). Labels are class indices 0..C-1
(torchvision's 0 = background is hidden inside).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

LEVELS = ("0", "1", "2", "3")            # the FPN maps of strides 4 .. 32 (+ "pool", stride 64)
ANCHOR_SIZES = (32, 64, 128, 256, 512)   # mmdet: scale 8 x strides 4 .. 64
ASPECT_RATIOS = (0.5, 1.0, 2.0)


class FasterRCNNHead(nn.Module):
    """FPN + RPN + RoI heads. ``forward(stages, images, image_sizes, targets=None)``: in
    training, the four losses (``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``,
    ``loss_box_reg``); in eval, a list per image of ``{"boxes": (N, 4) xyxy pixels, "scores":
    (N,), "labels": (N,) class indices}``. ``targets``: per image ``{"boxes": (n, 4) xyxy,
    "labels": (n,) class indices}``, n may be 0."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256,
                 representation: int = 1024, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100):
        super().__init__()
        if len(in_channels) != len(LEVELS):
            raise ValueError(f"FasterRCNNHead: needs the {len(LEVELS)} stage maps of strides 4-32, got "
                             f"{len(in_channels)} widths")
        self.in_channels, self.num_classes = list(in_channels), num_classes
        self.fpn = FeaturePyramidNetwork(self.in_channels, channels, extra_blocks=LastLevelMaxPool())
        anchors = AnchorGenerator(tuple((s,) for s in ANCHOR_SIZES), (ASPECT_RATIOS,) * len(ANCHOR_SIZES))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(channels, len(ASPECT_RATIOS)), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=256, positive_fraction=0.5, pre_nms_top_n={"training": 2000, "testing": 1000},
            post_nms_top_n={"training": 1000, "testing": 1000}, nms_thresh=0.7)
        pool = MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=0)
        self.roi_heads = RoIHeads(
            pool, TwoMLPHead(channels * 7 * 7, representation), FastRCNNPredictor(representation, num_classes + 1),
            fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
            bbox_reg_weights=None, score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img)

    def forward(self, stages: Sequence[Tensor], images: Tensor, image_sizes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None):
        if self.training and targets is None:
            raise ValueError("FasterRCNNHead: training needs targets (boxes and labels per image)")
        features = self.fpn(OrderedDict(zip(LEVELS, stages, strict=True)))
        batch = ImageList(images, image_sizes)
        shifted = None if targets is None else [{"boxes": t["boxes"].float(), "labels": t["labels"].long() + 1}
                                                for t in targets]
        proposals, rpn_losses = self.rpn(batch, features, shifted)
        detections, roi_losses = self.roi_heads(features, proposals, image_sizes, shifted)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return [{**d, "labels": d["labels"] - 1} for d in detections]
