"""Test setup. Runs first, so TRITON_INTERPRET is set before anything imports triton: on
a machine without CUDA, Triton kernels run on the CPU under the interpreter."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _gpu_path_on_cpu(request):
    """Under the interpreter, a test of the Triton backend (its name or parameters say
    triton) runs with each op's CUDA implementation registered for the CPU key: the path a
    GPU takes (dispatcher, fake kernel, register_autograd, launchers), on CPU tensors."""
    from skysense_fast.backends import triton_interpreted

    if HAS_CUDA or not triton_interpreted() or "triton" not in request.node.name:
        yield
        return
    from skysense_fast.ops.fused_op import gpu_implementations_on_cpu

    with gpu_implementations_on_cpu():
        yield


@pytest.fixture
def poisoned():
    """Fresh allocations (torch.empty & co., C++ included) come filled with NaN, so an
    element a kernel forgets to write shows up in the comparison."""
    prev_det, prev_fill = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(prev_det)
    torch.utils.deterministic.fill_uninitialized_memory = prev_fill


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
