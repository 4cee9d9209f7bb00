"""``skysense-fast bench``: each fused op against its plain-PyTorch reference on this machine,
forward (and forward + backward where the op has one), with a correctness check. A quick
health check of an install; the full suites are ``pytest benchmarks/ --benchmark-only``.
Timing: ``torch.utils.benchmark.Timer.blocked_autorange`` (synchronises CUDA), medians.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer

from .backends import use_backend
from .errors import InputError


def _cases(device: torch.device, scale: int) -> dict[str, tuple[Callable, Callable | None]]:
    """name -> (forward, forward + backward or None); each callable runs the op once."""
    from .ops import fusion_tokens, sinkhorn, temporal_attention, window_attention

    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, grad=False: torch.randn(*s, generator=g).to(device).requires_grad_(grad)  # noqa: E731
    cases: dict[str, tuple[Callable, Callable | None]] = {}
    scores = rnd(8, 1024 * scale, 100)
    cases[f"sinkhorn 8x{1024 * scale}x100"] = (lambda: sinkhorn(scores, 0.05, 3), None)

    side = 16 * scale
    q, k, v = (rnd(2, side, side, 4, 32, grad=True) for _ in range(3))
    logit_scale = torch.full((4, 1, 1), 2.3, device=device, requires_grad=True)
    bias = rnd(4, 64, 64, grad=True)
    win = lambda: window_attention(q, k, v, 8, 4, logit_scale=logit_scale, bias=bias)  # noqa: E731
    cases[f"window attention 2x{side}x{side}, 4x32, w8 shifted, SwinV2"] = (win, lambda: win().sum().backward())

    S = 256 * scale  # the 2b fusion's geometry: 1 + 20 + 10 tokens, 16 heads x 64
    tq, tk, tv = (rnd(S, 16, 31, 64, grad=True) for _ in range(3))
    tmp = lambda: temporal_attention(tq, tk, tv)  # noqa: E731
    cases[f"temporal attention {S} seqs x 31 tokens, 16x64"] = (tmp, lambda: tmp().sum().backward())

    B, C, h, T = 2, 128, 8 * scale, 8
    hr, s2, s1 = rnd(B, C, h, h, grad=True), rnd(B, T, C, h, h, grad=True), rnd(B, T, C, h, h, grad=True)
    doy = torch.randint(1, 366, (B, T), generator=g).to(device)
    table = rnd(1, 365, C, grad=True)
    fus = lambda: fusion_tokens(hr, s2, s1, doy_s2=doy, date_table=table)[0]  # noqa: E731
    cases[f"fusion tokens {B}x{h}x{h} px, 1+{T}+{T} tokens, {C} ch"] = (fus, lambda: fus().sum().backward())
    return cases


def _time(fn: Callable, reference: bool) -> float:
    def run():
        if reference:
            with use_backend("reference"):
                fn()
        else:
            fn()

    run()  # warm-up (JIT compiles, allocations)
    return Timer("run()", globals={"run": run}).blocked_autorange(min_run_time=0.3).median


def _max_error(fn: Callable) -> float:
    with torch.no_grad():
        fast = fn()
        with use_backend("reference"):
            ref = fn()
    return (fast.float() - ref.float()).abs().max().item()


def run(device: str = "cpu", scale: int = 1, out=print) -> list[dict]:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("bench: --device cuda but no CUDA device is available")
    if scale < 1:
        raise InputError(f"bench: --scale must be >= 1, got {scale}")
    rows = []
    out(f"{'op':<58}{'pass':<10}{'fused ms':>10}{'reference ms':>14}{'speed-up':>10}{'max |err|':>11}")
    for name, (fwd, fwd_bwd) in _cases(dev, scale).items():
        err = _max_error(fwd)
        for what, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            if fn is None:
                continue
            fast, ref = _time(fn, False), _time(fn, True)
            rows.append({"op": name, "pass": what, "fused_ms": fast * 1e3, "reference_ms": ref * 1e3,
                         "speedup": ref / fast, "max_abs_err": err})
            out(f"{name:<58}{what:<10}{fast * 1e3:>10.2f}{ref * 1e3:>14.2f}{ref / fast:>9.2f}x{err:>11.1e}")
    return rows
