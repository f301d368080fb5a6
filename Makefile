# The few commands a newcomer needs.  Each one creates .venv first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test example bench check-deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Installed markers: reinstall when pyproject.toml changes.
$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[all]'
	touch $@

run: $(VENV)/.installed-all
	$(BIN)/cat2run

test: $(VENV)/.installed-all
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -v

example: $(VENV)/.installed-all
	$(BIN)/python -m caterva2.tools.make_root_example root-example

bench: $(VENV)/.installed-all
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/link_bytes.py
	$(BIN)/python bench/relay.py
	$(BIN)/python bench/notify_latency.py
	$(BIN)/python bench/workers.py

# The example deployment of docs/deploy.md: systemd units, configuration, NATS server.
check-deploy: $(VENV)/.installed-all
	$(BIN)/python docs/deploy/check.py

clean:
	rm -rf $(VENV) _caterva2 _caterva2_tests _caterva2_client_venvs *.egg-info
