# `make demo`: create .venv, install, train a small contractive ConvNODE on MNIST and certify it.
# `make test`: create .venv, install, run the test suite (`make test-thorough`: larger hypothesis budgets;
# `make test-fast`: without the tests marked slow).
VENV ?= .venv
PYTHON ?= python3
# The torch build to install first (override for another platform, e.g. TORCH_SPEC="torch torchvision").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python

.PHONY: demo test test-thorough test-fast install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/cnode demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# hypothesis budgets x20 (tests/profiles.py): an hour or more
test-thorough: $(VENV)/.installed
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q

# everything but the tests marked slow
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
