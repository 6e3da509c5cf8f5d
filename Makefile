# make test  - create .venv, install the package with test extras, run the test suite
# make demo  - create .venv, install the package, train SAB on the copy task for a few minutes on the CPU,
#              print its accuracy and write the plots into the run directory
#
# Idempotent: each install step leaves a stamp file in .venv and is skipped while the stamp is newer than
# what it depends on. `make clean-venv` starts over.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0

DEMO_DIR ?= runs/demo
DEMO_SECONDS ?= 180
# A small copy task (10 digits recalled after T=10 steps, 30 steps per sequence) that a CPU runs at
# tens of updates per second; the time budget, not --steps, ends the run.
DEMO_FLAGS ?= --task copy --T 10 --model sab --hidden-size 128 --k-top 5 --k-att 5 --k-trunc 10 \
	--batch-size 32 --lr 1e-3 --eval-every 100 --checkpoint-every 500 --steps 100000

.PHONY: test demo clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: pip keeps a satisfying torch, whereas an unpinned torch (or a range pulled in by
# the package's own dependencies) would fetch a multi-GB CUDA build.
$(VENV)/.stamp-torch: | $(PY)
	$(PIP) install torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.stamp-install: $(VENV)/.stamp-torch pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-torch pyproject.toml
	$(PIP) install -e '.[test]'
	touch $@

test: $(VENV)/.stamp-test
	$(PY) -m pytest

# One intra-op thread: for a model this small, thread synchronisation costs more than it saves, and much
# more so on a busy machine.
demo: $(VENV)/.stamp-install
	rm -rf $(DEMO_DIR)
	OMP_NUM_THREADS=1 $(VENV)/bin/sab-mips train $(DEMO_FLAGS) --time-budget $(DEMO_SECONDS) --run-dir $(DEMO_DIR)
	$(VENV)/bin/sab-mips eval --run $(DEMO_DIR) --batches 8
	$(VENV)/bin/sab-mips plot --run $(DEMO_DIR)

clean-venv:
	rm -rf $(VENV)
