"""Fine-tuning data plumbing shared by the downstream tasks: spatially held-out validation
blocks, image + label augmentations that keep them aligned, and classification chips."""

from .augment import d4_transform, random_d4
from .chips import ChipDataset, read_chip_list
from .split import SpatialSplit, spatial_split

__all__ = ["ChipDataset", "SpatialSplit", "d4_transform", "random_d4", "read_chip_list", "spatial_split"]
