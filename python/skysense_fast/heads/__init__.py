"""Task heads on SkySense features, one small module each (see each module for the setting
it follows): dense segmentation (UPerNet) and scene classification."""

from .classification import SceneClassifier
from .upernet import ConvBNReLU, UPerNetHead

__all__ = ["ConvBNReLU", "SceneClassifier", "UPerNetHead"]
