"""Sinkhorn-Knopp equal-partition assignment (``torch.ops.skysense.sinkhorn``).

The prototype-assignment step of SkySense's geo-context prototype learning and of its
object-level clustering (SwAV-style): given similarity scores between N samples and K
prototypes, find the assignment Q = diag(e^u) exp(S / eps) diag(e^v) whose rows carry the
samples' mass and whose columns share it out as asked (equally by default).

Pieces of the op (the pattern every op of this package follows):

* schema and CPU kernel: ``csrc/sinkhorn/`` (C++, registered by loading ``_C``);
* CUDA: the CUDA C++ kernel (``kernels/sinkhorn.cu``) or the Triton kernel
  (``skysense_fast.triton.sinkhorn``), or the one forced with :func:`skysense_fast.use_backend`;
* fake (meta) kernel and backends: here, their registration derived from the schema
  (:mod:`.fused_op`);
* autograd: the assignment is a target (SwAV computes it under ``no_grad``), so the op
  has no derivative; asking for one raises a clear error instead of returning zeros;
* :func:`sinkhorn_reference`: plain PyTorch, the specification.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _lib
from ..errors import InputError
from ._dtypes import same_device
from .fused_op import Backend, FusedOp, Inputs, grid_limits

__all__ = ["sinkhorn", "sinkhorn_reference"]


def _check(scores: Tensor, epsilon: float, num_iters: int, tol: float) -> None:
    """Argument checks of the reference (the C++ op does the same in sinkhorn_prepare)."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"sinkhorn: scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() not in (2, 3):
        raise InputError(f"sinkhorn: scores must have shape (N, K) or (B, N, K), got shape {tuple(scores.shape)}")
    if scores.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise InputError(f"sinkhorn: scores must be float32, float64, bfloat16 or float16, got {scores.dtype}")
    if scores.numel() == 0:
        raise InputError("sinkhorn: scores must have at least one problem, sample and prototype, got shape "
                         f"{tuple(scores.shape)}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise InputError(f"sinkhorn: epsilon must be a finite number > 0, got {epsilon}")
    if num_iters < 1:
        raise InputError(f"sinkhorn: num_iters must be >= 1, got {num_iters}")
    if not (math.isfinite(tol) and tol >= 0):
        raise InputError(f"sinkhorn: tol must be a finite number >= 0 (0 = run exactly num_iters), got {tol}")


def _marginal(m: Tensor, name: str, what: str, B: int, L: int, like: Tensor) -> Tensor:
    if m.device != like.device:
        raise InputError(f"sinkhorn: {name} must be on {like.device} like scores, got {m.device}")
    if not m.is_floating_point():
        raise InputError(f"sinkhorn: {name} must be a floating tensor, got {m.dtype}")
    if not ((m.dim() == 1 and m.shape[0] == L) or (m.dim() == 2 and tuple(m.shape) == (B, L))):
        raise InputError(f"sinkhorn: {name} must have shape ({L},) or ({B}, {L}) (one entry per {what}), "
                         f"got {tuple(m.shape)}")
    m = m.to(like.dtype).expand(B, L)
    tiny = torch.finfo(like.dtype).tiny  # subnormal masses lose the log domain's round trip (as the kernels)
    if not (torch.isfinite(m).all() and (m >= tiny).all()):
        raise InputError(f"sinkhorn: {name} must be finite and at least {tiny:g} (the smallest normal "
                         f"{str(like.dtype)[6:]}) everywhere; scale both marginals up")
    return m


def sinkhorn_reference(scores: Tensor, epsilon: float = 0.05, num_iters: int = 3, tol: float = 0.0,
                       row_marginals: Tensor | None = None,
                       col_marginals: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Log-domain Sinkhorn-Knopp in plain PyTorch: the specification of the op.

    Args:
        scores: (N, K) or (B, N, K) similarities S between N samples and K prototypes; B
            independent problems. -inf is allowed (that pair gets no mass).
        epsilon: entropic temperature; Q is proportional to exp(S / epsilon).
        num_iters: iterations (each a column then a row normalisation; SwAV uses 3), or the
            maximum count when ``tol > 0``.
        tol: 0 runs exactly ``num_iters``; > 0 stops a problem once its column marginal error
            sum_k |sum_n Q_nk - b_k| / sum_k b_k is <= tol (checked after each iteration).
        row_marginals: a, (N,) or (B, N); default 1 per sample.
        col_marginals: b, (K,) or (B, K); default N / K per prototype. When only one of the
            two is given, the other is uniform with the same total; given both, their totals
            must agree.

    Returns:
        (Q, iters): Q shaped like scores, in its dtype; iters (B,) int64, the iterations run.

    Semantics, with u = v = 0 at the start, for each iteration::

        v = log b - logsumexp_n(S / eps + u)     # columns first, as SwAV
        u = log a - logsumexp_k(S / eps + v)     # rows last: rows sum exactly to a
        Q = exp(S / eps + u + v)

    With the defaults this equals SwAV's exp-domain loop (exp, normalise the whole, then
    alternately rows-of-prototypes and columns-of-samples, finally times N), without its
    overflow: SwAV's ``Q = exp(S / eps)`` is inf for S / eps > 88 in float32.
    Computes in float64 for float64 scores, else in float32.
    """
    _check(scores, epsilon, num_iters, tol)
    batched = scores.dim() == 3
    acc = torch.float64 if scores.dtype == torch.float64 else torch.float32
    S = (scores if batched else scores.unsqueeze(0)).to(acc) / epsilon
    if torch.isnan(S).any() or torch.isposinf(S).any():
        raise InputError("sinkhorn: scores contain NaN or +inf; scores must be finite (-inf is allowed and gives "
                         "zero mass)")
    B, N, K = S.shape
    a = None if row_marginals is None else _marginal(row_marginals, "row_marginals", "sample", B, N, S)
    b = None if col_marginals is None else _marginal(col_marginals, "col_marginals", "prototype", B, K, S)
    if a is None and b is None:
        a, b = S.new_ones(B, N), S.new_full((B, K), N / K)
    elif a is None:
        assert b is not None   # both None is the case above
        a = (b.sum(1, keepdim=True) / N).expand(B, N)
    elif b is None:
        b = (a.sum(1, keepdim=True) / K).expand(B, K)
    elif not torch.allclose(a.sum(1).double(), b.sum(1).double(), rtol=1e-4, atol=0):
        raise InputError("sinkhorn: row_marginals and col_marginals must have the same total mass per problem, "
                         f"got {a.sum(1).tolist()} and {b.sum(1).tolist()}")
    log_a, log_b = a.log(), b.log()

    u, v = S.new_zeros(B, N), S.new_zeros(B, K)
    iters = torch.full((B,), num_iters, dtype=torch.int64, device=S.device)
    active = torch.ones(B, dtype=torch.bool, device=S.device)
    for t in range(num_iters):
        v_new = log_b - torch.logsumexp(S + u[:, :, None], dim=1)
        u_new = log_a - torch.logsumexp(S + v_new[:, None, :], dim=2)
        if torch.isinf(v_new).any() or torch.isinf(u_new).any():
            raise InputError("sinkhorn: scores has a prototype (column) or sample (row) whose scores are all -inf")
        u = torch.where(active[:, None], u_new, u)
        v = torch.where(active[:, None], v_new, v)
        if tol > 0:
            colmass = torch.exp(S + u[:, :, None] + v[:, None, :]).sum(1)
            err = (colmass - b).abs().sum(1) / b.sum(1)
            stop = active & (err <= tol)
            iters = torch.where(stop, t + 1, iters)
            active = active & ~stop
            if not active.any():
                break
    Q = torch.exp(S + u[:, :, None] + v[:, None, :]).to(scores.dtype)
    return (Q if batched else Q.squeeze(0)), iters


def _prepare(a: Inputs) -> tuple:
    return _lib.native().sinkhorn_prepare(*SINKHORN.forward_args(a).values())


def _gpu_limits(a: Inputs) -> str | None:
    """Both GPU kernels: no float64; one grid row per problem (B up to 65,535)."""
    if a.scores.dtype == torch.float64:
        return "float64 is not supported (float32, bfloat16, float16)"
    return grid_limits(("problems", a.scores.shape[0] if a.scores.dim() == 3 else 1, 65535))


def _triton(a: Inputs) -> tuple[Tensor, Tensor]:
    from ..triton.sinkhorn import sinkhorn_triton  # lazy: TRITON_INTERPRET is read at import

    C = _lib.native()
    s3, log_a, log_b, batched = _prepare(a)
    out = a.get("out")
    if out is not None:
        C.sinkhorn_check_out(out, a.scores)
    out3 = None if out is None else (out if batched else out.unsqueeze(0))
    q, iters, status = sinkhorn_triton(s3, log_a, log_b, a.epsilon, a.num_iters, a.tol, out3)
    C.sinkhorn_raise_status(status)
    return (out if out is not None else q if batched else q.squeeze(0)), iters


def _cuda(a: Inputs) -> tuple[Tensor, Tensor]:
    return _lib.native().sinkhorn_cuda(*a.values())


def _fake(a: Inputs) -> tuple[Tensor, Tensor]:
    same_device("sinkhorn", "scores", a)
    s = a.scores
    if s.dim() not in (2, 3):
        raise InputError(f"sinkhorn: scores must have shape (N, K) or (B, N, K), got shape {tuple(s.shape)}")
    iters = s.new_empty((s.shape[0] if s.dim() == 3 else 1,), dtype=torch.int64)
    return torch.empty_like(s, memory_format=torch.contiguous_format), iters


def _into(f):  # sinkhorn_into returns the iteration counts; Q is in `out`
    return lambda a: f(a)[1]


# backend -> devices it runs on, and the GPU preference: CUDA C++ first because it needs no
# JIT compile on first use; the two have not yet been timed against each other on a GPU
# (benchmarks/gpu_check.py does, on a GPU machine).
def _op(name: str, reference, fake, wrap=lambda f: f) -> FusedOp:
    return FusedOp(name, reference=reference, fake=fake, differentiable=False, check=_prepare,
                   gpu_order=("cuda", "triton"),
                   backends=(Backend("cpp", ("cpu",)), Backend("cuda", ("cuda",), _gpu_limits, wrap(_cuda)),
                             Backend("triton", ("cuda",), _gpu_limits, wrap(_triton))))


def _reference_into(scores, epsilon, num_iters, tol, row_marginals, col_marginals, out):
    q, iters = sinkhorn_reference(scores, epsilon, num_iters, tol, row_marginals, col_marginals)
    _lib.native().sinkhorn_check_out(out, scores)
    out.copy_(q)
    return iters


SINKHORN = _op("sinkhorn", sinkhorn_reference, _fake)
# The same, writing Q into a caller's buffer (reused across calls: no fresh pages to fault in).
SINKHORN_INTO = _op("sinkhorn_into", _reference_into, lambda a: _fake(a)[1], _into)


@SINKHORN.entry
def sinkhorn(scores: Tensor, epsilon: float = 0.05, num_iters: int = 3, tol: float = 0.0,
             row_marginals: Tensor | None = None, col_marginals: Tensor | None = None, *,
             out: Tensor | None = None, return_iters: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Sinkhorn-Knopp assignment of N samples to K prototypes (fused kernels).

    Same arguments and semantics as :func:`sinkhorn_reference`; returns Q, or (Q, iters)
    with ``return_iters=True``. Runs the C++ kernel on the CPU and the CUDA C++ or Triton
    kernel on GPUs (see :func:`skysense_fast.backends`). float32, bfloat16 and float16
    inputs accumulate in float32; float64 runs on the CPU. Computed in the log domain, so any
    epsilon > 0 works, but float32 resolves max |scores| / epsilon only so far: Q's error
    grows as about 1e-8 times it (1% at 1e6; the reference's too), and where a column's mass
    underflows entirely (~1e9) the CPU kernel raises instead of answering; use float64
    scores there.
    Not differentiable: Q is a target.

    ``out``: a contiguous tensor shaped like ``scores`` (same dtype and device, not sharing
    its memory) to write Q into. Reusing one across calls avoids allocating (and, for
    large Q, faulting in fresh pages for) the output every time.

    Example (SwAV / SkySense prototype assignment)::

        with torch.no_grad():
            q = sinkhorn(features @ prototypes.T, epsilon=0.05, num_iters=3)
    """
    if not isinstance(scores, Tensor):
        raise TypeError(f"sinkhorn: scores must be a torch.Tensor, got {type(scores).__name__}")
    args = dict(epsilon=float(epsilon), num_iters=int(num_iters), tol=float(tol))
    if out is None:
        Q, iters = SINKHORN.call(locals(), **args)
    else:
        if torch.is_grad_enabled() and scores.requires_grad:
            raise RuntimeError("sinkhorn: out= cannot record a gradient (sinkhorn is not differentiable: its "
                               "assignment is a training target); call it under torch.no_grad() or on scores.detach()")
        Q, iters = out, SINKHORN_INTO.call(locals(), **args)
    return (Q, iters) if return_iters else Q


def _not_differentiable(ctx, grad_q, grad_iters):
    raise RuntimeError("sinkhorn is not differentiable: its assignment is a training target (SwAV, SkySense). "
                       "Compute it under torch.no_grad() or from scores.detach().")


if SINKHORN.schema is not None:
    torch.library.register_autograd("skysense::sinkhorn", _not_differentiable,
                                    setup_context=lambda ctx, inputs, output: None)
    # sinkhorn_into mutates `out`, so it cannot carry an autograd formula; sinkhorn() refuses
    # out= when a gradient is being recorded.
