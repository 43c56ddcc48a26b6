# Two commands on a fresh machine (Python 3.11, no GPU):
#   make report   set up .venv, then fine-tune on the sample photographs and write the parity + latency report
#   make test     set up .venv with the test extras, then run the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: setup report test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

report: $(VENV)/.installed
	$(PY) -m alexnet_zoo.samples --write-folder $(OUT)/photos
	$(PY) -m alexnet_zoo.train --data $(OUT)/photos --model alexnet_bn --epochs 3 --output $(OUT)/run
	$(PY) -m benchmarks --checkpoint $(OUT)/run --data $(OUT)/photos/val --output-dir $(OUT)/report

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(OUT)
