# One entry point: `make install`, `make run`, `make test`, `make lint`, `make bench`, `make docs`.
PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
# Torch first (sam2 imports it at build time), then sam2 without build isolation and without its
# CUDA extension (segd does hole/sprinkle clean-up itself), then everything else.
TORCH   := torch==2.14.1 torchvision==0.29.1
SAM2    := sam2==1.1.0

.PHONY: install run test test-gpu bench lint docs clean browser

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "segd needs $(PYTHON) (Python 3.11) on PATH" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	SAM2_BUILD_CUDA=0 $(PIP) install --quiet --no-build-isolation $(SAM2)
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole service on ./inbox → ./outbox with a private Redis. First start: fetches the default
# checkpoint (SEGD_MODEL__CHECKPOINT=random make run tries the plumbing without one).
run: install
	$(VENV)/bin/segd up

test: install browser
	$(PY) -m pytest -q

# The web page's browser tests drive Debian's chromium through chromium-driver. As root with
# apt-get they are installed here when missing; this step never fails the build: without them
# those tests skip and say why.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver for the browser tests (apt-get)"; \
	  { apt-get install -y chromium chromium-driver >/dev/null 2>&1 || \
	    { apt-get update >/dev/null 2>&1 && apt-get install -y chromium chromium-driver >/dev/null 2>&1; }; } || \
	  echo "could not install chromium; the browser tests will be skipped"; \
	else echo "chromium/chromium-driver missing and not root: the browser tests will be skipped"; fi

test-gpu: install
	$(PY) -m pytest -q -m gpu

bench: install
	$(PY) -m bench

# Style, formatting, the layers of the tree (import contracts in pyproject.toml) and types.
SOURCES := common watcher worker segd tests bench
lint: install
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Pages generated from the code (a test fails when they are stale).
docs: install
	$(PY) -m common.config.reference docs/configuration.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
