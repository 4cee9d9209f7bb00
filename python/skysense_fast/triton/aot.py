"""Ahead-of-time compilation of a :class:`~skysense_fast.triton.launch.Launch` for a CUDA
target, with no GPU: Triton's own compiler and ptxas, exactly as its JIT would specialise
the launch (the JIT's binder turns the arguments into a signature, constexprs and alignment
attributes), then the numbers that decide whether it runs well: registers, spills, stack
frame (ptxas), shared memory (Triton) and the kind of matrix instructions in the PTX.

Used by ``benchmarks/gpu_compile.py`` (``make gpu-compile``); tensors may be on the meta
device (their data pointers are 0: aligned, as the caching allocator's are).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from .launch import Launch

# opt-in shared memory per block (bytes): A100 (sm_80), H100 / H200 (sm_90)
SHARED_LIMIT = {80: 166912, 90: 232448}


@dataclass(frozen=True)
class Compiled:
    registers: int
    spill_bytes: int      # spill stores + loads
    stack_bytes: int
    shared_bytes: int
    mma: str              # wgmma, mma.sync or fma
    num_warps: int
    float_atomics: bool   # atomic float adds: summation order left to the hardware


_FLOAT_ATOMIC = re.compile(r"atomic_rmw\s+fadd")


def _target(arch: int) -> GPUTarget:
    return GPUTarget("cuda", arch, 32)


def specialise(launch: Launch, arch: int):
    """(options, signature, constexprs, attrs) as the JIT would derive them for this launch."""
    kernel = launch.kernel
    backend = make_backend(_target(arch))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.constexprs, num_warps=launch.num_warps, num_stages=launch.num_stages, debug=False)
    bound, spec, opts = binder(*launch.args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound, spec, opts)


def cache_key(launch: Launch, arch: int) -> str:
    """Identifies a specialisation: two launches with the same key compile to the same binary."""
    options, signature, constexprs, attrs = specialise(launch, arch)
    opts = {k: v for k, v in sorted(options.__dict__.items()) if k not in ("debug",)}
    return repr((launch.kernel.fn.__qualname__, arch, sorted(signature.items()), sorted(constexprs.items()),
                 sorted(attrs.items()), opts))


_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?"
                    r"Used (\d+) registers", re.S)


def compile_launch(launch: Launch, arch: int) -> Compiled:
    """Compiles for sm_<arch>; raises whatever Triton or ptxas raise."""
    options, signature, constexprs, attrs = specialise(launch, arch)
    src = ASTSource(launch.kernel, signature, constexprs, attrs)
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope():
        knobs.nvidia.dump_ptxas_log = True
        knobs.compilation.always_compile = True  # a cached binary would print no ptxas log
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=_target(arch), options=options.__dict__)
    m = _PTXAS.search(log.getvalue())
    if m is None:
        raise RuntimeError(f"no ptxas statistics for {launch.name}:\n{log.getvalue()[-2000:]}")
    stack, st, ld, regs = (int(x) for x in m.groups())
    ptx = compiled.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "fma"
    atomics = bool(_FLOAT_ATOMIC.search(compiled.asm["ttgir"]))
    return Compiled(regs, st + ld, stack, int(compiled.metadata.shared), mma, launch.num_warps, atomics)
