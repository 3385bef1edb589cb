VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The IB client library of the main environment: ib_async (default) or ib_insync.
BACKEND ?= ib_async
OTHER := $(if $(filter ib_async,$(BACKEND)),ib_insync,ib_async)

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# one environment holds one backend: both install a top-level eventkit package
	if $(PY) -m pip show -q $(OTHER) 2>/dev/null; then \
	    $(PY) -m pip uninstall -q -y $(OTHER) eventkit aeventkit; fi
	$(PY) -m pip install -q -e '.[test,$(subst _,-,$(BACKEND))]'
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
