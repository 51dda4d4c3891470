# Two commands, each self-sufficient on a fresh machine:
#   make demo   set up, then run the embedded default (Fashion-MNIST split, --mode compare);
#               a second `make demo` replaces the first one's outputs (--overwrite_output_dir)
#   make test   set up, then run the offline test suite
VENV    ?= .venv
PY      := $(VENV)/bin/python
FMNIST  := /usr/share/datasets/fashion-mnist
STAMP   := $(VENV)/.jtln-installed
# torch 2.14.1 + torchvision 0.29.1: the only pair that imports together (with timm) on these machines.
TORCH   := torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo test bench clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

data: $(FMNIST)/train-images-idx3-ubyte.gz

$(FMNIST)/train-images-idx3-ubyte.gz:
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist

demo: setup
	HF_HUB_OFFLINE=1 $(PY) recipes/train_jtln.py --overwrite_output_dir

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ot.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_step.py

clean:
	rm -rf outputs .pytest_cache
