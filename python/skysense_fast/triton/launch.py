"""One description of a Triton kernel launch, shared by the op and the compile gate.

Each op's launcher builds :class:`Launch` objects (kernel, grid, arguments, constexprs,
``num_warps``, ``num_stages``) and calls them; ``benchmarks/gpu_compile.py`` builds the very
same objects from meta tensors at the model's shapes and compiles them for sm_80 / sm_90
without a GPU. So what the gate compiles is exactly what a GPU run launches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError

# CUDA's grid limits: x up to 2^31 - 1 blocks, y and z up to 65,535
GRID_LIMITS = (2**31 - 1, 65535, 65535)


@dataclass(frozen=True)
class Launch:
    kernel: Any                      # a triton.JITFunction
    grid: tuple[int, ...]
    args: tuple                      # positional arguments, tensors and scalars
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        for i, (n, lim) in enumerate(zip(self.grid, GRID_LIMITS, strict=False)):
            if not 0 <= n <= lim:
                raise InputError(f"{self.name}: grid dimension {i} is {n}, outside CUDA's limit 0..{lim} "
                                 "(split the input into smaller calls)")

    @property
    def name(self) -> str:
        return getattr(self.kernel, "__name__", None) or self.kernel.fn.__name__

    def __call__(self) -> None:
        if 0 in self.grid:
            return
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)


def run(launches: list[Launch]) -> None:
    for launch in launches:
        launch()
