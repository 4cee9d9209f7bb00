"""The process group of a torchrun job, set up in one place for training, embedding and
prediction: NCCL where the ranks compute on CUDA devices, gloo otherwise (embedding and
prediction exchange only barriers; their pieces go through the file system)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: torch.device | str | None = None) -> tuple[int, int]:
    """(rank, world size); under torchrun (``WORLD_SIZE`` > 1) starts the process group once.

    ``device``: where this rank computes; a CUDA device gets NCCL (and becomes the current
    device, as NCCL needs), anything else gloo. A group already started is kept as it is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the running group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Waits for every rank (nothing to wait for in a single process)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``, 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def agree(error: BaseException | None, what: str) -> None:
    """Every rank learns whether any rank failed before the next collective (a forward under
    FSDP2): a rank that failed raises its own error, the others an InputError saying so, instead
    of waiting forever in a collective the failed rank never joins. One scalar all-reduce."""
    rank, world = rank_and_world()
    if world > 1:
        on_gpu = dist.get_backend() == "nccl"
        flag = torch.tensor([error is not None], dtype=torch.int32,
                            device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        failed = bool(flag.item())
    else:
        failed = error is not None
    if error is not None:
        raise error
    if failed:
        from .errors import InputError

        raise InputError(f"{what}: another rank failed (its message says why); rank {rank} stops too")
