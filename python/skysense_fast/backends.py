"""Backends: what was built, what can run now, and forcing one for a call.

Every hot op has up to four implementations:

``reference``  plain PyTorch, the specification (always available, any device);
``cpp``        the C++ CPU kernel in ``skysense_fast._C``;
``triton``     a Triton kernel (CUDA; on the CPU only under ``TRITON_INTERPRET=1``);
``cuda``       a CUDA C++ kernel from ``kernels/``.

Each op chooses once per call (``skysense_fast.ops.fused_op``): the fast backend of the
tensors' device that can run the inputs (``cpp`` on the CPU; on CUDA the op's order of
``cuda`` and ``triton``), else the reference; skipped backends are logged at DEBUG with
their reasons. A backend forced with :func:`use_backend` that cannot run a call raises
with every backend's reasons instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import _lib
from .errors import InputError

BACKENDS = ("reference", "cpp", "triton", "cuda")

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("skysense_backend", default=None)


@dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str = ""  # why not, when not available; details otherwise

    def as_dict(self) -> dict[str, object]:
        return {"available": self.available, "reason": self.reason}


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_status() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "triton is not installed")
    if _lib.load_error() is not None:
        return BackendStatus(False, "needs skysense_fast._C (argument checks): " + str(_lib.load_error()))
    if torch.cuda.is_available():
        return BackendStatus(True, "CUDA device")
    if triton_interpreted():
        return BackendStatus(True, "Triton interpreter on the CPU (TRITON_INTERPRET=1; slow, for tests)")
    return BackendStatus(False, "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run on the CPU)")


def backend_status(name: str) -> BackendStatus:
    """Whether backend ``name`` can run on this machine, and why not."""
    if name == "reference":
        return BackendStatus(True, "plain PyTorch")
    if name == "cpp":
        err = _lib.load_error()
        return BackendStatus(err is None, err or f"CPU kernels ({_lib.build_info().get('cpu_capability')})")
    if name == "triton":
        return _triton_status()
    if name == "cuda":
        info = _lib.build_info()
        if _lib.load_error() is not None:
            return BackendStatus(False, str(_lib.load_error()))
        if not info.get("cuda"):
            return BackendStatus(False, f"built without CUDA kernels: {info.get('cuda_reason') or 'unknown'}")
        if not torch.cuda.is_available():
            return BackendStatus(False, f"built for sm_{info.get('cuda_archs')} but no CUDA device is visible")
        return BackendStatus(True, f"CUDA kernels for sm {info.get('cuda_archs')}")
    raise InputError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def backends() -> dict[str, object]:
    """What was built and what can run now, with the reason when something cannot.

    Returns a dict with one entry per backend (``{"available": bool, "reason": str}``), plus
    ``flash_attn`` (optional, detected at run time) and ``build`` (the extension's build info).
    """
    out: dict[str, object] = {name: backend_status(name).as_dict() for name in BACKENDS}
    has_fa = importlib.util.find_spec("flash_attn") is not None
    out["flash_attn"] = BackendStatus(has_fa, "installed" if has_fa else "not installed (optional)").as_dict()
    out["build"] = _lib.build_info()
    return out


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force one backend for the ops called inside the block (per thread / task).

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` if the backend cannot run
    on this machine. An op that has no implementation in the forced backend, or a tensor on
    a device the backend cannot handle, raises when the op is called.
    """
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    st = backend_status(name)
    if not st.available:
        raise RuntimeError(f"backend {name!r} is not available: {st.reason}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> str | None:
    return _forced.get()
