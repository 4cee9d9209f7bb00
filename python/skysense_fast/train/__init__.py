"""The training stack that pretraining and fine-tuning share: the loop (:mod:`.loop`), atomic
checkpoints with exact resume (:mod:`.checkpoint`), AdamW with layer decay and warmup + cosine
(:mod:`.optim`)."""

from .loop import Trainee, device_of, optimiser_step, run, shard
from .optim import build_optimizer, build_scheduler, cosine_schedule, param_groups

__all__ = ["Trainee", "build_optimizer", "build_scheduler", "cosine_schedule", "device_of",
           "optimiser_step", "param_groups", "run", "shard"]
