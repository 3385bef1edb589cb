VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The IB client library of the main environment: ib_async (default) or ib_insync. The other
# one gets an environment of its own (both install a top-level eventkit package).
BACKEND ?= ib_async
OTHER := $(if $(filter ib_async,$(BACKEND)),ib_insync,ib_async)
OTHER_VENV := .venv-$(subst _,-,$(OTHER))
OTHER_PY := $(OTHER_VENV)/bin/python
OTHER_STAMP := $(OTHER_VENV)/.installed
# The tests that speak to IB through the client library (the farm's workers, the simulator's
# unmodified clients, the adapter): run again on the other library (`make test-all-backends`
# runs the whole suite on both).
BACKEND_TESTS ?= tests/sim/test_insync_client.py tests/sim/test_faults.py \
	tests/farm/test_farm.py tests/farm/test_error_kinds.py tests/farm/test_faults.py \
	tests/farm/test_maintenance.py tests/ktrdr/test_adapter.py tests/real

.PHONY: demo test test-main test-other test-all-backends lint bench clean

define install
	test -x $(1)/bin/python || python3 -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	# one environment holds one backend: both install a top-level eventkit package
	if $(1)/bin/python -m pip show -q $(3) 2>/dev/null; then \
	    $(1)/bin/python -m pip uninstall -q -y $(3) eventkit aeventkit; fi
	$(1)/bin/python -m pip install -q -e '.[test,$(subst _,-,$(2))]'
	touch $(1)/.installed
endef

$(STAMP): pyproject.toml
	$(call install,$(VENV),$(BACKEND),$(OTHER))

$(OTHER_STAMP): pyproject.toml
	$(call install,$(OTHER_VENV),$(OTHER),$(BACKEND))

demo: $(STAMP)
	$(PY) -m ktrdr.demo

test: test-main test-other

test-main: $(STAMP)
	$(PY) -m ruff check ibfarm ktrdr tests benchmarks
	$(PY) -m pytest -q

test-other: $(OTHER_STAMP)
	IBFARM_BACKEND=$(OTHER) $(OTHER_PY) -m pytest -q $(BACKEND_TESTS)

test-all-backends: test-main $(OTHER_STAMP)
	IBFARM_BACKEND=$(OTHER) $(OTHER_PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks --quick

lint: $(STAMP)
	$(PY) -m ruff check ibfarm ktrdr tests benchmarks

clean:
	rm -rf $(VENV) $(OTHER_VENV) .pytest_cache
