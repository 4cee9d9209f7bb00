"""Fine-tuning SkySense on a user's labels: segmentation of a scene (a GeoTIFF with a class
raster or vector labels) and scene classification (chips), through the shared training loop.

``skysense-fast finetune CONFIG`` runs :func:`finetune` on a YAML config (:func:`load_config`);
the task model it writes is what ``skysense-fast predict --task`` runs over a scene.
"""

from .augment import d4_transform, random_d4
from .chips import ChipDataset, read_chip_list
from .config import FinetuneConfig, from_dict, load_config, validate
from .split import SpatialSplit, spatial_split
from .task import TaskModel, TaskSpec, build_task_model, load_task, read_task_spec, save_task
from .trainer import finetune

__all__ = ["ChipDataset", "FinetuneConfig", "SpatialSplit", "TaskModel", "TaskSpec", "build_task_model",
           "d4_transform", "finetune", "from_dict", "load_config", "load_task", "random_d4", "read_chip_list",
           "read_task_spec", "save_task", "spatial_split", "validate"]
