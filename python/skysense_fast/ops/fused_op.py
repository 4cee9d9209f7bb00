"""One definition per op: everything a fused op has is derived from its schema.

An op's arguments are declared once, in its schema (``TORCH_LIBRARY_FRAGMENT`` beside the
CPU kernel in ``csrc/<op>/<op>_op.cpp``, so a TorchScript or AOT runtime without Python
finds it too). :class:`FusedOp` reads that schema and derives the rest:

* the entry point's argument binding; the public function's parameters are checked against
  the schema when the module is imported (:meth:`FusedOp.entry`);
* the fake kernel's and the CUDA implementation's registration, called with the arguments
  by name;
* the autograd formula. The backward op's schema says what it needs, by name:
  ``grad_<output>`` for each differentiable output, forward outputs (``out``, ``lse``) and
  forward arguments; it returns ``grad_<argument>`` for each differentiable argument. A
  gradient comes back in its argument's shape and dtype; an empty one for an absent argument
  is ``None``;
* the backend choice, once per call: each :class:`Backend` states the devices it runs on
  and what inputs it cannot run (dtype, sizes, launch limits). An explicit
  :func:`~skysense_fast.use_backend` that cannot run a call raises with every backend's
  reasons; an automatic choice skips it (logged at DEBUG) and ends at the reference.

Under ``TRITON_INTERPRET=1``, :func:`gpu_implementations_on_cpu` registers each op's CUDA
implementation for the CPU dispatch key too, so tests run the shipped GPU path (dispatcher,
fake kernel, ``register_autograd``, launchers) on CPU tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import _lib
from ..backends import backend_status, forced_backend, triton_interpreted
from ..errors import InputError

log = logging.getLogger("skysense_fast")

# The backend the entry point chose for the op call under way; the device implementation and
# the backward of that call read it. Unset for a call that did not come through an entry
# point (a compiled graph, torch.ops called directly): the implementation chooses then.
_CALL_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("skysense_call_backend", default=None)
_gpu_impls_on_cpu = False  # inside gpu_implementations_on_cpu()
OPS: dict[str, FusedOp] = {}


class Inputs(dict):
    """An op's arguments by name, in schema order (``a.q`` or ``a["q"]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _no_limits(a: Inputs) -> str | None:
    return None


def grid_limits(*dims: tuple[str, int, int]) -> str | None:
    """For Backend.limits: the first (what, size, limit) whose size exceeds its limit."""
    for what, n, lim in dims:
        if n > lim:
            return f"{what} is {n}, over the launch limit of {lim}"
    return None


@dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    ``limits(a)`` returns why this backend cannot run these inputs (None: it can).
    ``forward(a)`` / ``backward(a)`` are Python implementations (Triton, CUDA C++ through
    its binding); None means the kernel the dispatcher holds for the device (the C++ CPU
    kernels, registered with the schema).
    """

    name: str
    devices: tuple[str, ...]
    limits: Callable[[Inputs], str | None] = _no_limits
    forward: Callable[[Inputs], Any] | None = None
    backward: Callable[[Inputs], Any] | None = None


def _schema(name: str) -> torch.FunctionSchema | None:
    if _lib.load_error() is not None:
        return None
    return getattr(torch.ops.skysense, name).default._schema


def _device(a: Inputs) -> torch.device:
    for v in a.values():
        if isinstance(v, Tensor):
            return v.device
    raise InputError("no tensor among the arguments")


class FusedOp:
    """An op of ``torch.ops.skysense`` with its reference, fake kernel and backends.

    Args:
        name: the op's schema name (``window_attention``); ``<name>_backward`` is its
            backward op, when the op is differentiable.
        reference: plain PyTorch with the schema's argument names; returns the op's outputs,
            or the leading ones (the rest, e.g. ``lse``, are a kernel's own).
        fake: (Inputs) -> outputs: shapes, dtypes and strides of the kernels' results.
        fake_backward: the same for the backward op.
        backends: the fast implementations; automatic choice takes ``cpp`` on the CPU and
            the first of ``gpu_order`` that can run the call on CUDA.
        check: the kernels' argument checks (raising InputError), run before the reference
            too so that every backend refuses bad input with the same message.
    """

    def __init__(self, name: str, *, reference: Callable, fake: Callable[[Inputs], Any],
                 backends: tuple[Backend, ...], gpu_order: tuple[str, ...] = (),
                 fake_backward: Callable[[Inputs], Any] | None = None, differentiable: bool = True,
                 check: Callable[[Inputs], Any] | None = None):
        self.name = name
        self.reference = reference
        self.check = check
        self.backends = {b.name: b for b in backends}
        self.backends["reference"] = Backend("reference", ("cpu", "cuda"))
        self.gpu_order = gpu_order
        self.schema = _schema(name)
        self.backward_schema = _schema(name + "_backward") if differentiable else None
        self.arg_names = [a.name for a in self.schema.arguments] if self.schema else \
            list(inspect.signature(reference).parameters)
        self.defaults = {s.name: s.default_value for s in self.schema.arguments if s.has_default_value()} \
            if self.schema else {}
        # the backward op's arguments and results by name (plain data: dynamo traces it)
        bs = self.backward_schema
        self.backward_args = [s.name for s in bs.arguments] if bs else []
        self.backward_returns = [r.name for r in bs.returns] if bs else []
        self.returns = [r.name for r in self.schema.returns] if self.schema else []
        OPS[name] = self
        if self.schema is not None:
            self._register(fake, fake_backward)

    # -- arguments -------------------------------------------------------------------------
    def bind(self, args: tuple, kwargs: dict | None = None) -> Inputs:
        """The call's arguments by name, defaults filled in from the schema."""
        kwargs = dict(kwargs or {})
        if len(args) > len(self.arg_names):
            raise TypeError(f"{self.name}: takes {len(self.arg_names)} arguments, got {len(args)}")
        a = Inputs(zip(self.arg_names[:len(args)], args, strict=True))  # the rest: by name or default
        defaults = self.defaults
        for n in self.arg_names[len(args):]:
            if n in kwargs:
                a[n] = kwargs.pop(n)
            elif n in defaults:
                a[n] = defaults[n]
            else:
                raise TypeError(f"{self.name}: missing argument {n!r}")
        if kwargs:
            raise TypeError(f"{self.name}: unexpected argument(s) {', '.join(map(repr, kwargs))}")
        return a

    def entry(self, fn: Callable) -> Callable:
        """Decorates the public function: its parameters must start with the schema's
        arguments, by name and in order, with the schema's defaults where it has them."""
        if self.schema is None:
            return fn
        params = list(inspect.signature(fn).parameters.values())
        names = [p.name for p in params[:len(self.arg_names)]]
        if names != self.arg_names:
            raise TypeError(f"{fn.__qualname__}: parameters {names} differ from the schema of skysense::{self.name} "
                            f"{self.arg_names}")
        for p, s in zip(params, self.schema.arguments, strict=False):
            if s.has_default_value() and p.default != s.default_value:
                raise TypeError(f"{fn.__qualname__}: {p.name} defaults to {p.default!r}, the schema to "
                                f"{s.default_value!r}")
        return fn

    # -- backend choice --------------------------------------------------------------------
    def _cannot(self, b: Backend, a: Inputs, dev: str) -> str | None:
        """Why backend b cannot run this call (None: it can)."""
        if dev not in b.devices and not (dev == "cpu" and b.name == "triton" and triton_interpreted()):
            return f"runs {', '.join(b.devices)} tensors, not {dev}"
        if dev == "cpu" and _gpu_impls_on_cpu and b.name != "reference":
            if b.forward is None:
                return "the CPU dispatch key runs the GPU implementations (gpu_implementations_on_cpu)"
        elif dev == "cpu" and b.name == "triton":
            return ("runs CPU tensors only under TRITON_INTERPRET=1 inside "
                    "skysense_fast.ops.fused_op.gpu_implementations_on_cpu() (tests)")
        if b.name != "reference":
            st = backend_status(b.name)
            if not st.available:
                return st.reason
        return b.limits(a)

    def choose(self, a: Inputs) -> Backend:
        """The backend for one call: the forced one (or an error with every backend's
        reasons), else the device's fast backend that can run it, else the reference."""
        dev = _device(a).type
        forced = forced_backend()
        if forced is not None:
            b = self.backends.get(forced)
            why = "has no implementation of this op" if b is None else self._cannot(b, a, dev)
            if b is not None and why is None:   # (b is None always has a why)
                return b
            others = "; ".join(f"{n}: {self._cannot(o, a, dev) or 'can run it'}" for n, o in self.backends.items()
                               if n != forced)
            raise RuntimeError(f"{self.name}: backend {forced!r} cannot run this call: {why} (others: {others})")
        order = ("cpp",) if dev == "cpu" else self.gpu_order if dev == "cuda" else ()
        skipped: list[str] = []
        for name in order:
            b = self.backends.get(name)
            why = "not implemented" if b is None else self._cannot(b, a, dev)
            if b is not None and why is None:   # (b is None always has a why)
                if skipped:
                    log.debug("%s on %s: %s (skipped %s)", self.name, dev, name, "; ".join(skipped))
                return b
            skipped.append(f"{name}: {why}")
        log.debug("%s on %s: reference (skipped %s)", self.name, dev, "; ".join(skipped) or "none")
        return self.backends["reference"]

    # -- calls ------------------------------------------------------------------------------
    def call(self, params: dict[str, Any], **overrides: Any) -> Any:
        """The op on an entry point's parameters (``locals()`` at its start), some replaced
        (normalised) by ``overrides``; parameters beyond the schema's are the entry's own."""
        return self(**{n: overrides[n] if n in overrides else params[n] for n in self.arg_names})

    @property
    def op(self) -> Any:
        return getattr(torch.ops.skysense, self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        a = self.bind(args, kwargs)
        if self.schema is None:  # no extension: the reference, or the reason the forced backend cannot run
            if forced_backend() not in (None, "reference"):
                _lib.native()
            return self.reference(**a)
        if torch.compiler.is_compiling() or _device(a).type == "meta":
            return self.op(*a.values())  # the graph holds the op; its implementation chooses when it runs
        b = self.choose(a)
        if b.name == "reference":
            if self.check is not None:
                self.check(a)
            return self.reference(**a)
        token = _CALL_BACKEND.set(b.name)
        try:
            return self.op(*a.values())
        finally:
            _CALL_BACKEND.reset(token)

    def forward_args(self, a: Inputs) -> Inputs:
        """The forward's arguments out of a backward call's."""
        return Inputs((n, a[n]) for n in self.arg_names)

    def _backend_in_call(self, a: Inputs) -> Backend:
        name = _CALL_BACKEND.get()
        if name is not None and name in self.backends and self.backends[name].forward is not None:
            return self.backends[name]
        b = self.choose(a)
        return b if b.forward is not None or b.name == "reference" else self.backends["reference"]

    def _forward_impl(self, *args: Any) -> Any:
        """The implementation registered for CUDA (and for the CPU in the interpreter tests)."""
        a = self.bind(args)
        b = self._backend_in_call(a)
        if b.name == "reference":
            return self._reference_outputs(a)
        assert b.forward is not None   # _backend_in_call gives a Python forward or the reference
        return b.forward(a)

    def _backward_impl(self, *args: Any) -> Any:
        a = Inputs(zip(self.backward_args, args, strict=True))
        b = self._backend_in_call(self.forward_args(a))
        if b.name == "reference":
            return self._reference_backward(a)
        assert b.backward is not None, f"{self.name}: backend {b.name} has a forward but no backward"
        return b.backward(a)

    def _reference_outputs(self, a: Inputs) -> Any:
        """The reference's results in the kernels' output tensors (the rest NaN)."""
        outs = self._fake(a)
        single = not isinstance(outs, tuple)
        outs = (outs,) if single else outs
        with torch.no_grad():
            ref = self.reference(**a)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for o, r in zip(outs[:len(ref)], ref, strict=True):   # outputs past the reference's: NaN below
            o.copy_(r)
        for o in outs[len(ref):]:
            o.fill_(float("nan"))
        return outs[0] if single else outs

    def _reference_backward(self, a: Inputs) -> Any:
        """The backward op's results from autograd through the reference."""
        fwd = self.forward_args(a)
        returns = self.backward_returns
        wanted = [r[len("grad_"):] for r in returns if isinstance(fwd.get(r[len("grad_"):]), Tensor)]
        grad_outs = [n for n in self.backward_args if n.startswith("grad_")]
        with torch.enable_grad():
            leaves = {n: fwd[n].detach().requires_grad_() for n in wanted}
            ref = self.reference(**(fwd | leaves))
            ref = ref if isinstance(ref, tuple) else (ref,)
            grads = torch.autograd.grad(ref[:len(grad_outs)], list(leaves.values()), [a[g] for g in grad_outs],
                                        allow_unused=True)
        got = dict(zip(wanted, grads, strict=True))
        outs = self._fake_backward(a)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for o, r in zip(outs, returns, strict=True):
            g = got.get(r[len("grad_"):])
            if o.numel():
                o.copy_(g.reshape(o.shape)) if g is not None else o.zero_()
        return outs if len(outs) > 1 else outs[0]

    # -- registration -----------------------------------------------------------------------
    def _register(self, fake: Callable, fake_backward: Callable | None) -> None:
        qual = f"skysense::{self.name}"
        self._fake = fake
        torch.library.register_fake(qual)(lambda *args: fake(self.bind(args)))
        torch.library.impl(qual, "CUDA")(self._forward_impl)
        if self.backward_schema is None:
            return
        assert fake_backward is not None, f"{self.name}: a differentiable op needs fake_backward"
        self._fake_backward = fake_backward
        torch.library.register_fake(qual + "_backward")(
            lambda *args: fake_backward(Inputs(zip(self.backward_args, args, strict=True))))
        torch.library.impl(qual + "_backward", "CUDA")(self._backward_impl)
        torch.library.register_autograd(qual, self._autograd_backward, setup_context=self._setup_context)

    def _setup_context(self, ctx: Any, inputs: tuple, output: Any) -> None:
        outs = output if isinstance(output, tuple) else (output,)
        named = dict(zip(self.returns, outs, strict=True)) | dict(zip(self.arg_names, inputs, strict=True))
        needed = [n for n in self.backward_args if not n.startswith("grad_")]
        for r, o in zip(self.returns, outs, strict=True):
            if "grad_" + r not in self.backward_args:
                ctx.mark_non_differentiable(o)
        tensors = [n for n in needed if isinstance(named[n], Tensor)]
        ctx.save_for_backward(*(named[n] for n in tensors))
        ctx.tensor_names = tensors
        ctx.others = {n: named[n] for n in needed if n not in tensors}
        ctx.backend = _CALL_BACKEND.get()

    def _autograd_backward(self, ctx: Any, *grads: Tensor) -> tuple:
        vals = dict(zip(ctx.tensor_names, ctx.saved_tensors, strict=True)) | ctx.others
        vals |= {"grad_" + r: g for r, g in zip(self.returns, grads, strict=True)}
        token = _CALL_BACKEND.set(ctx.backend)
        try:
            res = getattr(torch.ops.skysense, self.name + "_backward")(*(vals[n] for n in self.backward_args))
        finally:
            _CALL_BACKEND.reset(token)
        res = res if isinstance(res, tuple) else (res,)
        got = {r[len("grad_"):]: g for r, g in zip(self.backward_returns, res, strict=True)}
        out: list[Tensor | None] = []
        for i, n in enumerate(self.arg_names):
            x, g = vals.get(n), got.get(n)
            if g is None or not isinstance(x, Tensor) or not ctx.needs_input_grad[i]:
                out.append(None)
            else:  # a kernel may give a parameter's gradient flat, in the accumulation dtype
                out.append(g if g.shape == x.shape and g.dtype == x.dtype else g.reshape(x.shape).to(x.dtype))
        return tuple(out)


@contextlib.contextmanager
def gpu_implementations_on_cpu() -> Iterator[None]:
    """Registers every op's CUDA implementation for the CPU dispatch key while the block
    runs (``TRITON_INTERPRET=1`` only): the Triton backend then runs on CPU tensors through
    the same dispatcher entry, fake kernel and autograd formula as on a GPU."""
    if not triton_interpreted():
        raise RuntimeError("gpu_implementations_on_cpu needs TRITON_INTERPRET=1 (set before triton is imported)")
    lib = torch.library.Library("skysense", "IMPL")
    for op in OPS.values():
        if op.schema is None:
            continue
        lib.impl(op.name, op._forward_impl, "CPU", allow_override=True)
        if op.backward_schema is not None:
            lib.impl(op.name + "_backward", op._backward_impl, "CPU", allow_override=True)
    global _gpu_impls_on_cpu
    _gpu_impls_on_cpu = True
    try:
        yield
    finally:
        _gpu_impls_on_cpu = False
        lib._destroy()
