"""Loads the native extension ``skysense_fast._C``.

Loading it registers the ``torch.ops.skysense`` ops (schemas, CPU kernels). If it is
missing or broken, the package still imports: the reference backend works, and every
native path raises :class:`ExtensionNotBuilt` with the reason and how to build.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch  # libtorch must be loaded before the extension

MIN_TORCH = (2, 11)
if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
    raise ImportError(f"skysense_fast needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}, found {torch.__version__}")


class ExtensionNotBuilt(ImportError):
    """The native extension could not be loaded."""


_C: ModuleType | None
_load_error: str | None
try:
    _C = importlib.import_module("skysense_fast._C")
    _load_error = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    _C = None
    _load_error = f"{type(e).__name__}: {e}"


def native() -> ModuleType:
    """The extension module, or ExtensionNotBuilt explaining why it is unavailable."""
    if _C is None:
        raise ExtensionNotBuilt(
            f"skysense_fast._C is not available ({_load_error}). Build it against the installed "
            "torch with `pip install --no-build-isolation -e .` (or `make install`)."
        )
    return _C


def load_error() -> str | None:
    return _load_error


_BUILD_INFO: dict[str, Any] = dict(_C.build_info()) if _C is not None else {}


def build_info() -> dict[str, Any]:
    """What the extension was built with (empty if it is missing)."""
    return dict(_BUILD_INFO)
