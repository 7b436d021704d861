# bids_synth developer entry points. Every target builds .venv on a fresh machine first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXAMPLES := $(VENV)/share/pybids-examples
DEMO   ?= demo
NPROCS ?= 2
TEST_LIMIT ?= 2700
export TEMPLATEFLOW_HOME ?= $(CURDIR)/$(VENV)/share/templateflow
export NIPYPE_NO_ET = 1
export HF_HUB_OFFLINE = 1

.PHONY: help venv demo test test-all default-model bench clean

help:
	@echo "make demo           phantom dataset -> group (regression fit + report) -> participant (embedded default model)"
	@echo "make test           install with test extras, run the test suite"
	@echo "make default-model  retrain the embedded default model (bids_synth/data/default_model)"
	@echo "make bench          run the benchmarks in bench/ (JSON in bench/results/)"

$(STAMP): pyproject.toml tools/install.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	tools/install.sh --cpu --test --editable $(PY)
	$(PY) -c "from bids_synth.preprocessing.templates import ensure_templateflow_home as e; print('TemplateFlow home:', e())"
	-tools/fetch_pybids_examples.sh $(EXAMPLES)
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)
	$(VENV)/bin/bids-synth-phantom $(DEMO)/bids --n-subjects 6 --seed 7 --missing 0.3 \
	    --resolution low --ground-truth $(DEMO)/groundtruth
	$(VENV)/bin/bids_synth $(DEMO)/bids $(DEMO)/derivatives group --method regression --res 4 \
	    -w $(DEMO)/work --nprocs $(NPROCS) --omp-nthreads 1
	$(VENV)/bin/bids_synth $(DEMO)/bids $(DEMO)/derivatives participant --model default \
	    -w $(DEMO)/work --nprocs $(NPROCS) --omp-nthreads 1
	@echo
	@echo "Derivatives:  $(CURDIR)/$(DEMO)/derivatives"
	@echo "Reports:      $$(ls $(CURDIR)/$(DEMO)/derivatives/*.html | tr '\n' ' ')"
	@echo "Ground truth: $(CURDIR)/$(DEMO)/groundtruth"

# the suite takes about 20 min on 2 cores; `timeout` is a backstop so that a hung worker
# process can never hold a CI job past its limit
test: $(STAMP)
	BIDS_SYNTH_PYBIDS_EXAMPLES=$(CURDIR)/$(EXAMPLES) timeout --kill-after=60 $(TEST_LIMIT) \
	    $(PY) -m pytest -q -m "not slow" --timeout 600 $(PYTEST_ARGS)

test-all: $(STAMP)
	BIDS_SYNTH_PYBIDS_EXAMPLES=$(CURDIR)/$(EXAMPLES) $(PY) -m pytest -q --timeout 1800 $(PYTEST_ARGS)

default-model: $(STAMP)
	$(PY) -m bids_synth.training.default_model --out bids_synth/data/default_model

bench: $(STAMP)
	$(PY) bench/phantom.py
	$(PY) bench/participant.py
	$(PY) bench/speed.py
	$(PY) bench/quality.py
	$(PY) bench/clinical.py --train-dir /tmp/bids_synth-default --model bids_synth/data/default_model
	$(PY) bench/contrast_augmentation.py
	$(PY) bench/pds.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
