# The README's commands. Every target is idempotent; the venv is rebuilt only when
# pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := service,gateway,ops,infra,dev
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv test test-fast test-slow serve lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# test: what CI runs (.ci/run), everything but the `exhaustive` numeric proofs.
# test-fast: while you work: no browser, nothing `slow` (minutes -> ~3 on 2 cores).
# test-slow: the whole suite, with the CPU kernel matrix and emulated-bfloat16 images.
test: $(STAMP)
	$(PY) -m pytest -m "not exhaustive" $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not exhaustive and not slow and not browser" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

serve: $(STAMP)
	$(VENV)/bin/text2img serve $(SERVE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check service infra scripts systemd tests benchmarks
	$(VENV)/bin/ruff format --check service infra scripts systemd tests benchmarks
	$(VENV)/bin/mypy service/text2img infra scripts systemd

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
