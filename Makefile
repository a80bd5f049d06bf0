# `make demo`: create .venv, install, train a small contractive ConvNODE on MNIST and certify it.
# `make test`: create .venv, install, run the test suite without the tests marked slow (what CI runs, ~5 minutes on
# two cores); `make test-thorough`: every test, slow ones included, with hypothesis budgets x20.
VENV ?= .venv
PYTHON ?= python3
# The torch build to install first (override for another platform, e.g. TORCH_SPEC="torch torchvision").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python

.PHONY: demo test test-thorough test-all install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,export]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/cnode demo

# one worker per core, at most four (pytest-xdist; one torch thread each: tests/conftest.py)
test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" -n auto --maxprocesses=4

# every test, the slow ones too (the demo, the example study, torchrun, whole shipped-model checks), hypothesis
# budgets x20 (tests/profiles.py): an hour or more
test-thorough: $(VENV)/.installed
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q -n auto --maxprocesses=4

# every test at the default budgets
test-all: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --maxprocesses=4

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
