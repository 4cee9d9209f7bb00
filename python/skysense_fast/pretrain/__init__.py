"""SkySense pretraining: objectives, augmentations, the training loop (FSDP2-ready).

``skysense-fast pretrain CONFIG`` runs :func:`pretrain` on a YAML config
(:func:`load_config`); ``torchrun --nproc_per_node=N -m skysense_fast.cli pretrain CONFIG``
runs it data-parallel.
"""

from .config import ConfigError, PretrainConfig, from_dict, load_config, validate
from .losses import DINOHead, distill_loss, info_nce, object_assign, object_pool
from .objective import SkySensePretrainer, ema_update, make_teacher, pretrain_losses
from .prototypes import region_estimates, update_bank
from .synthetic import SyntheticMultimodal
from .trainer import pretrain

__all__ = ["ConfigError", "DINOHead", "PretrainConfig", "SkySensePretrainer", "SyntheticMultimodal", "distill_loss",
           "ema_update", "from_dict", "info_nce", "load_config", "make_teacher", "object_assign", "object_pool",
           "pretrain", "pretrain_losses", "region_estimates", "update_bank", "validate"]
