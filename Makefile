# Two commands, each self-sufficient on a fresh machine:
#   make demo   set up, then run the embedded default (Fashion-MNIST split, --mode compare);
#               a second `make demo` replaces the first one's outputs (--overwrite_output_dir)
#   make test   set up, then run the offline test suite (and its numerics again on torch's scalar kernels)
# and one for maintainers:
#   make lock   re-resolve constraints.txt: the newest versions that pyproject.toml admits today
VENV    ?= .venv
PY      := $(VENV)/bin/python
FMNIST  := /usr/share/datasets/fashion-mnist
# Debian's browser for the demo's browser test (playwright drives it; `playwright install` needs the network)
CHROMIUM := /usr/bin/chromium
STAMP   := $(VENV)/.jtln-installed
# torch 2.14.1 + torchvision 0.29.1: the only pair that imports together (with timm) on these machines.
TORCH   := torch==2.14.1 torchvision==0.29.1
# The versions the tests were run with (every package, transitive ones included): a fresh machine
# installs what CI installed. pyproject.toml keeps ranges for library users.
LOCK    := constraints.txt
# Tests whose bounds are floating-point rounding bounds: run a second time on torch's scalar
# kernels, which round differently from the vectorised ones.
NUMERICS := tests/test_ot.py tests/test_ot_fast.py tests/test_ot_numerics.py tests/test_ot_objective.py \
            tests/test_loss.py tests/test_mixed_precision.py

.PHONY: setup data browser demo test bench lock clean

setup: $(STAMP) data

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) $(TORCH)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[test]"
	touch $@

data: $(FMNIST)/train-images-idx3-ubyte.gz

$(FMNIST)/train-images-idx3-ubyte.gz:
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist

browser: $(CHROMIUM)

$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

demo: setup
	HF_HUB_OFFLINE=1 $(PY) recipes/train_jtln.py --overwrite_output_dir

test: setup browser
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q
	ATEN_CPU_CAPABILITY=default HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q $(NUMERICS)

bench: setup
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_ot.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_step.py

# A fresh venv without constraints: pip takes the newest versions that pyproject.toml admits;
# their exact versions become the lock. Then run `make test` (it reinstalls from the new lock).
lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet $(TORCH)
	.venv-lock/bin/pip install --quiet -e ".[test]"
	.venv-lock/bin/pip freeze --exclude-editable | LC_ALL=C sort -f > $(LOCK)
	rm -rf .venv-lock

clean:
	rm -rf outputs .pytest_cache
