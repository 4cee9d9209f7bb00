"""Task heads on SkySense features, one small module each (see each module for the setting
it follows): dense segmentation (UPerNet, or a linear probe) and scene classification."""

from .classification import SceneClassifier
from .linear import LinearSegmentationHead
from .upernet import ConvBNReLU, UPerNetHead

__all__ = ["ConvBNReLU", "LinearSegmentationHead", "SceneClassifier", "UPerNetHead"]
