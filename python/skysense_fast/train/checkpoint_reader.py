"""Reading a training checkpoint executes nothing it holds.

A checkpoint folder is data a run wrote, but a resume must not trust it more than any other
file: a planted pickle would run with the trainer's rights. torch's distributed-checkpoint
reader unpickles ``.metadata`` with plain ``pickle`` and loads its byte items (optimiser
hyper-parameters and other non-tensor state) with ``torch.load(weights_only=False)``. Here
``.metadata`` goes through an unpickler that knows only the classes a checkpoint's metadata is
made of, and byte items must pass ``torch.load(weights_only=True)``; tensors are read as
torch reads them (``weights_only=True`` already). Everything else a resume reads is JSON.
"""

from __future__ import annotations

import collections
import io
import os
import pathlib
import pickle

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.metadata import StorageMeta


def _allowed(module: str, name: str):
    """The object a metadata pickle may name, or None."""
    if module == "torch.distributed.checkpoint.metadata":
        obj = getattr(dcp_metadata, name, None)
        return obj if isinstance(obj, type) else None
    if module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo":
        from torch.distributed.checkpoint.filesystem import _StorageInfo

        return _StorageInfo
    if module == "pathlib" and name in ("Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
        return getattr(pathlib, name)
    if module == "torch" and name == "Size":
        return torch.Size
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "torch.serialization" and name == "_get_layout":
        return torch.serialization._get_layout
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    return None


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        obj = _allowed(module, name)
        if obj is None:
            raise pickle.UnpicklingError(
                f"checkpoint metadata names {module}.{name}, which no checkpoint's metadata holds: refusing to "
                "load it (the file may have been tampered with)")
        return obj


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` is unpickled with an allow-list."""

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        getter = getattr(self, "_get_metadata_path", None)
        path = getter(rank) if getter is not None else os.path.join(str(self.path), ".metadata")
        with self.fs.create_stream(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise pickle.UnpicklingError(f"{path} does not hold checkpoint metadata (got {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """Byte items must load with ``torch.load(weights_only=True)`` (plain numbers, strings,
    tuples, tensors); a pickle that needs anything else is refused before torch's planner
    unpickles it."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(f"checkpoint item {read_item.dest_index.fqn!r} is not plain data: "
                                         f"refusing to load it ({str(e).splitlines()[0]})") from None
        value.seek(0)
        super().load_bytes(read_item, value)  # unpickles the same, vetted bytes
