"""Where a SkySense forward spends its time on the CPU, by operator (torch.profiler):
`python benchmarks/profile_model.py [config]`."""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_model_bench import setup  # noqa: E402


def main(name: str = "skysense-base") -> None:
    m, x = setup(name)
    with torch.no_grad():
        m(**x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            m(**x)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main(*sys.argv[1:])
