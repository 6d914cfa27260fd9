# Two entry points (see README): `make demo` and `make test`. Both create/reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test install browser lock clean-demo

install: $(VENV)/.installed

# Re-installs only when the lock or pyproject changed; uv's cache makes a re-install quick.
# uv runs here, beside pyproject.toml, so it applies its [tool.uv] override-dependencies
# (facenet-pytorch's stale pins; see pyproject.toml).
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9
	$(UV) pip install -q --python $(PY) -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

demo: install
	$(VENV)/bin/dfcl demo

# With bytecode caching on even where the environment turns it off (PYTHONDONTWRITEBYTECODE=1, as
# in many CI images): the suite starts dozens of Python processes (dfcl, its DVC stages, Prefect's
# temporary API) that import torch, Avalanche, Prefect and MLflow, and without the cache each
# compiles them again (measured: the full stack 20 s instead of 50 s of CPU per process).
#
# Two test processes (pytest-xdist), a test file each at a time (module-scoped fixtures are made
# once), the slowest files first (tests/conftest.py: SLOW_FILES): most of the suite's time goes to
# `dfcl` processes, Prefect APIs and DVC stages starting and waiting on each other, which overlaps
# well even on 2 cores. Lint first (ruff, see pyproject):
# a second, not a reason to wait for the suite.
test: install browser
	$(VENV)/bin/ruff check .
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# The web page test drives Debian's chromium (Playwright's browser download does not work offline).
# Without root or apt the test skips, and fails under CI=true.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver \
	  || echo "chromium could not be installed: the web page test will skip (and fail under CI=true)"; }

# Re-resolve the pinned dependency set after editing pyproject.toml.
lock:
	$(UV) pip compile pyproject.toml --extra test --python-version 3.11 -o requirements.lock

clean-demo:
	rm -rf data/raw data/processed data/learner data/incoming data/compare data/remote data/cache mlflow.db mlruns/*/ .prefect metrics plots .dfcl
	rm -f dvc.lock data/triggers.json data/*.lock
	git checkout -- dvc.yaml  # the demo's ingests added their stages to it
