VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ktrdr.demo

test: $(STAMP)
	$(PY) -m ruff check ibfarm ktrdr tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks --quick

lint: $(STAMP)
	$(PY) -m ruff check ibfarm ktrdr tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
