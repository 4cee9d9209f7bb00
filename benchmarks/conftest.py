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

FAST = "fused"  # fast paths are named fused*; every other name in a group is a baseline


def pytest_configure(config):
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None) if session else None
    if not benches:
        return
    groups: dict[str, dict[str, object]] = {}
    for b in benches:
        groups.setdefault(b.group or b.name, {})[b.extra_info.get("impl", b.name)] = b
    tr = terminalreporter
    tr.write_sep("=", "skysense_fast: speed ratios, baseline / fast path, same run: by median (by min)")
    tr.write_line(f"threads={torch.get_num_threads()}  THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}")
    for group, impls in sorted(groups.items()):
        fast = {k: v for k, v in impls.items() if k.startswith(FAST)}
        base = {k: v for k, v in impls.items() if not k.startswith(FAST)}
        tr.write_line(group + ": " + ", ".join(f"{k} {v.stats.median * 1e3:.2f} ms ({v.stats.min * 1e3:.2f})"
                                               for k, v in sorted(impls.items())))
        for fname, f in sorted(fast.items()):
            ratios = [f"{b.stats.median / f.stats.median:.2f}x ({b.stats.min / f.stats.min:.2f}x) vs {bname}"
                      for bname, b in sorted(base.items())]
            mem = f.extra_info.get("peak_extra_over_output")
            if mem is not None:
                ratios.append(f"peak extra memory {mem:.4f} x output")
            mem = f.extra_info.get("peak_vs_eager")
            if mem is not None:
                ratios.append(f"peak memory {mem:.2f} x eager's")
            tr.write_line(f"    {fname}: " + "; ".join(ratios))
