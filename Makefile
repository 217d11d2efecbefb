# ds_kronos: `make demo` sets everything up and runs the main job on the demo market; `make test` runs the tests.
# Both create .venv/ on first use. TORCH_SPEC overrides the torch requirement chosen by launch/install_torch.sh.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ds_kronos_installed
DEMO_DIR ?= demo_runs

.PHONY: setup test test-fast demo clean-venv

setup: $(STAMP)

$(STAMP): setup.py launch/install_torch.sh launch/install_libaio.sh launch/install_async_io.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@bash launch/install_torch.sh $(PY)
	@bash launch/install_libaio.sh
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) launch/install_async_io.py
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	DS_ACCELERATOR=cpu $(PY) -m pytest -q tests

# The everyday lane: every test that starts no process (tests/conftest.py enforces the `processes` mark).
test-fast: $(STAMP)
	$(PY) -m ruff check .
	DS_ACCELERATOR=cpu $(PY) -m pytest -q -m "not processes" tests

demo: $(STAMP)
	DS_ACCELERATOR=cpu bash launch/demo.sh $(DEMO_DIR)

clean-venv:
	rm -rf $(VENV)
