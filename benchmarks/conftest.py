"""Benchmark setup and the ratio summary printed at the end of `pytest benchmarks/`.

Allocation: glibc hands multi-MB blocks back to the OS, so every large allocation
page-faults again and timings swing 10x. This process asks torch's CPU allocator for
transparent huge pages (THP_MEM_ALLOC_ENABLE=1, set before torch is imported), which makes
fresh allocations cheap for the fused path and the baselines alike.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

FAST = "fused"  # the name of the fast path in every group; the others are baselines


def pytest_configure(config):
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None) if session else None
    if not benches:
        return
    groups: dict[str, dict[str, object]] = {}
    for b in benches:
        impl = b.extra_info.get("impl", b.name)
        groups.setdefault(b.group or b.name, {})[impl] = b
    tr = terminalreporter
    tr.write_sep("=", "skysense_fast: speed ratios (baseline median / fused median, same run)")
    tr.write_line(f"threads={torch.get_num_threads()}  THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    for group, impls in sorted(groups.items()):
        fast = impls.get(FAST)
        if fast is None:
            continue
        t_fast = fast.stats.median
        parts = [f"fused {t_fast * 1e3:.2f} ms"]
        for name, b in sorted(impls.items()):
            if name != FAST:
                parts.append(f"{name} {b.stats.median * 1e3:.2f} ms = {b.stats.median / t_fast:.2f}x")
        mem = fast.extra_info.get("peak_extra_over_output")
        if mem is not None:
            parts.append(f"fused peak extra memory {mem:+.2f} x output")
        extra = fast.extra_info.get("note")
        if extra:
            parts.append(extra)
        tr.write_line(f"{group}: " + "; ".join(parts))
