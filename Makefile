# The two commands of the quick start: `make lab` and `make test`.
# Both create .venv from requirements.lock (exact pins) and install course_lib into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

# Committed notebook outputs are made at the default scale on both backends.
export COURSE_SCALE    ?= small
export COURSE_BACKENDS ?= sqlite,postgresql

.PHONY: install lab test lint notebooks navigation lock bench clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed: run `make PYTHON=python3.11 ...`")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

# Jupyter refuses to run as root unless told (containers, CI boxes); LAB_FLAGS adds options.
LAB_FLAGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

lab: install  ## open JupyterLab at notebook 00
	$(BIN)/jupyter lab $(LAB_FLAGS) --ServerApp.root_dir=. \
		--LabApp.default_url=/lab/tree/notebooks/00_start_here.ipynb

test: install  ## lint, unit tests, notebook hygiene and nbval over every notebook
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check course_lib tests scripts

notebooks: install  ## re-execute every notebook top to bottom and store its outputs
	$(BIN)/python -m course_lib.navigation
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.kernel_name=python3 notebooks/[0-9]*.ipynb

navigation: install  ## regenerate navigation cells and notebooks/index.md
	$(BIN)/python -m course_lib.navigation

lock: install  ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		-o requirements.lock

bench: install  ## the foundation benchmarks (counter overhead, embedded server start)
	$(BIN)/python scripts/bench_foundation.py

clean:  ## remove generated data and embedded servers (keeps .venv)
	rm -rf .course
