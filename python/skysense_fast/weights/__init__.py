"""Checkpoint I/O: the official SkySense files, and this package's safetensors weights."""

from .any import load_any
from .io import load_weights, save_weights
from .official import LoadReport, load_official, read_checkpoint, split_full_checkpoint

__all__ = ["LoadReport", "load_any", "load_official", "load_weights", "read_checkpoint", "save_weights",
           "split_full_checkpoint"]
