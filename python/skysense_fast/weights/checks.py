"""What every weights loader checks before it changes a model: the file's format from its
bytes (not its name), and each tensor against the parameter it replaces (shape, a floating
dtype for a floating parameter, finite values). Loaders validate everything first and copy
after, so a load that fails leaves the model as it was."""

from __future__ import annotations

import json
import os
import struct

import torch
from torch import Tensor

from ..errors import InputError

_ZIP = b"PK\x03\x04"


def file_format(path: str | os.PathLike) -> str:
    """'safetensors' or 'torch' (a zip written by torch.save), from the file's first bytes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}" + (" (a directory)" if os.path.isdir(path) else ""))
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == _ZIP:
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and \
            2 <= (n := struct.unpack("<Q", head[:8])[0]) <= os.path.getsize(path) - 8:
        with open(path, "rb") as f:
            f.seek(8)
            header = f.read(n)
        try:
            json.loads(header)
        except ValueError as e:
            raise InputError(f"{path} is a damaged safetensors file (its header is not JSON: {e})") from None
        return "safetensors"
    raise InputError(f"{path} is neither a safetensors file nor a torch checkpoint (its first bytes are "
                     f"{head[:8]!r}); is it truncated or of another format?")


def check_tensor(name: str, value: Tensor, target: Tensor) -> None:
    """Raises ValueError naming `name` unless `value` can replace `target`."""
    if not isinstance(value, Tensor):
        raise InputError(f"{name}: the file holds a {type(value).__name__}, not a tensor")
    if tuple(value.shape) != tuple(target.shape):
        raise InputError(f"{name}: the file has shape {tuple(value.shape)}, the model {tuple(target.shape)} "
                         "(weights for another config?)")
    if target.is_floating_point():
        if not value.is_floating_point():
            raise InputError(f"{name}: the file holds {value.dtype} values where the model has {target.dtype}")
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise InputError(f"{name}: {bad} of {value.numel()} values are NaN or infinite (a corrupt file?)")
    elif value.dtype != target.dtype:
        raise InputError(f"{name}: the file holds {value.dtype} where the model has {target.dtype}")


def check_shapes(path: str, build, what: str = "the model its config describes", blocks: int | None = None) -> None:
    """The file's tensors have the shapes of the model ``build()`` makes, checked on the meta
    device before anything is allocated: a crafted config cannot make us build a huge model.
    ``blocks``: the transformer blocks the config describes; more than the file has tensors
    (each block has several) is refused before even the meta build."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        held = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if blocks is not None and blocks > len(held):   # even on meta, a million blocks take minutes to build
        raise InputError(f"{path}: its config describes {blocks} transformer blocks, more than the file's "
                         f"{len(held)} tensors: {what} is not what the file holds")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    if held != shapes:
        bad = sorted(k for k in set(held) | set(shapes) if held.get(k) != shapes.get(k))
        raise InputError(f"{path}: its tensors do not match {what} (e.g. {bad[:3]})")


def block_count(cfg) -> int:
    """Transformer blocks of a model config: Swin blocks, two ViTs' layers, fusion layers."""
    return sum(cfg.hr_depths) + 2 * cfg.vit_depth + cfg.fusion_layers
