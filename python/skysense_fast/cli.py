"""The ``skysense-fast`` command: ``info`` (build and backends) and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    import skysense_fast

    info = {"skysense_fast": skysense_fast.__version__, "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "backends": skysense_fast.backends()}
    print(json.dumps(info, indent=2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Prototype assignment on a bundled synthetic problem, checked against the reference."""
    import torch

    import skysense_fast
    from skysense_fast.ops import sinkhorn_reference

    gen = torch.Generator().manual_seed(0)
    B, N, K, d = args.batch, args.samples, args.prototypes, 64
    feats = torch.nn.functional.normalize(torch.randn(B, N, d, generator=gen), dim=-1)
    protos = torch.nn.functional.normalize(torch.randn(K, d, generator=gen), dim=-1)
    scores = feats @ protos.T  # cosine similarities, as in SwAV / SkySense prototype learning
    t0 = time.perf_counter()
    q, iters = skysense_fast.sinkhorn(scores, epsilon=0.05, num_iters=3, return_iters=True)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    q_ref, _ = sinkhorn_reference(scores.double(), 0.05, 3)
    t_ref = time.perf_counter() - t0
    err = (q.double() - q_ref).abs().max().item()
    load = q.sum(1) / (N / K)  # prototype load relative to an equal share
    print(f"sinkhorn: {B} problems x {N} samples x {K} prototypes, eps=0.05, {int(iters[0])} iterations")
    print(f"  fused {skysense_fast.build_info().get('cpu_capability', '?')} kernel {t_fast * 1e3:.1f} ms, "
          f"float64 reference {t_ref * 1e3:.1f} ms, max |Q - Q_ref| = {err:.2e}")
    print(f"  rows sum to 1 within {(q.sum(2) - 1).abs().max().item():.1e}; "
          f"prototype load min/max = {load.min().item():.3f}/{load.max().item():.3f} of an equal share")
    print(f"  hard assignments use {q.argmax(2).unique().numel()} of {K} prototypes")
    return 0 if err < 1e-4 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="skysense-fast", description="SkySense with fused kernels")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="build, backends and devices").set_defaults(fn=_cmd_info)
    d = sub.add_parser("demo", help="run the bundled demo")
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--samples", type=int, default=4096)
    d.add_argument("--prototypes", type=int, default=100)
    d.set_defaults(fn=_cmd_demo)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
