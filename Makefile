# Quick start: `make demo` (set up, then reconstruct the shipped example) and `make test` (set up, run all tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.recon3d-installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU build of torch; on a GPU machine install the CUDA build of your choice first
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	# (setuptools notes on every editable install that a folder named like the package could shadow it; ours
	# is that package, so the note is silenced: it is the one line a clean install printed)
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e ".[test]"
	# build the kernels now, with the venv's ninja (a machine without a C++ compiler still installs)
	$(BIN)/python -m recon3d.build_kernels || echo "note: the kernels did not build (see above); rendering needs them, or --backend reference (slow)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recon3d reconstruct examples/garden/images -o runs/demo --time-budget 3 --overwrite
	@echo
	@echo "View the result in the browser:"
	@echo "  $(BIN)/recon3d view runs/demo"
	@echo "or put recon3d on PATH once per shell:"
	@echo "  source $(BIN)/activate && recon3d view runs/demo"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
