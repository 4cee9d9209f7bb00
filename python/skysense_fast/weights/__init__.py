"""Checkpoint I/O: the official SkySense files, this package's safetensors weights, and
Hugging Face-style folders of them (``save_pretrained`` / ``from_pretrained``)."""

from .any import load_any
from .hub import from_pretrained, save_pretrained
from .io import load_weights, save_weights
from .official import LoadReport, load_official, read_checkpoint, split_full_checkpoint

__all__ = ["LoadReport", "from_pretrained", "load_any", "load_official", "load_weights", "read_checkpoint",
           "save_pretrained", "save_weights", "split_full_checkpoint"]
