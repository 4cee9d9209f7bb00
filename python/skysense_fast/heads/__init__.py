"""Task heads on SkySense features, one small module each (see each module for the setting
it follows): dense segmentation (UPerNet, or a linear probe; FCN on one map) and scene
classification; object detection (Faster R-CNN + FPN)."""

from .classification import SceneClassifier
from .detection import FasterRCNNHead
from .fcn import FCNHead
from .linear import LinearSegmentationHead
from .upernet import ConvBNReLU, UPerNetHead

__all__ = ["ConvBNReLU", "FasterRCNNHead", "FCNHead", "LinearSegmentationHead", "SceneClassifier", "UPerNetHead"]
