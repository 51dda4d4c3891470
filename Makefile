# Two commands, each self-sufficient on a fresh machine:
#   make demo   set up, then run the embedded default (Fashion-MNIST split, --mode compare);
#               a second `make demo` replaces the first one's outputs (--overwrite_output_dir)
#   make test   set up, then run the offline test suite twice: on this CPU's kernels, then on another CPU's
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
# The suite runs twice: on the kernels torch picks for this CPU, then on those another CPU gets
# (torch rounds differently with AVX-512, AVX2 and scalar kernels): AVX2, an AMD machine's, where
# this CPU has AVX-512; scalar ("default") where it has AVX2 or less.
OTHER_CPU = $(shell $(PY) -c "import torch; print('avx2' if torch.backends.cpu.get_cpu_capability() == 'AVX512' else 'default')")
# Two pytest-xdist workers, one per core; a test file stays on one worker (its module fixtures run once).
PYTEST  := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=40

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
	@echo "pass 1 of 2: this CPU's kernels ($$($(PY) -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'))"
	$(PYTEST)
	@echo "pass 2 of 2: ATEN_CPU_CAPABILITY=$(OTHER_CPU), the kernels of another CPU"
	ATEN_CPU_CAPABILITY=$(OTHER_CPU) $(PYTEST)

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
