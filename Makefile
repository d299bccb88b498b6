# One entry point: `make install`, `make test`, `make bench`, `make lint`.
PYTHON  ?= python3.11
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
# Torch first (sam2 imports it at build time), then sam2 without build isolation and without its
# CUDA extension (segd does hole/sprinkle clean-up itself), then everything else.
TORCH   := torch==2.14.1 torchvision==0.29.1
SAM2    := sam2==1.1.0

.PHONY: install run test test-gpu bench lint clean

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

test: install
	$(PY) -m pytest -q

test-gpu: install
	$(PY) -m pytest -q -m gpu

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check worker watcher tests bench
	$(VENV)/bin/ruff format --check worker watcher tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
