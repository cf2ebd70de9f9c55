# Two commands do all the set-up on a fresh Debian/Ubuntu machine:
#   make demo   - install what is missing, then run the demo
#   make test   - install what is missing, then run the test suite
#   make test-pymer4 - the pymer4 extra (fit.model_at) in its own venv (pandas < 3)
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-pymer4 bench system-deps venv clean

system-deps:
	@bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

venv: system-deps $(STAMP)

demo: venv
	$(VENV)/bin/clusterlmer demo

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# pymer4 0.8 needs pandas < 3, which the main venv does not pin: the extra gets
# its own venv, and tests/conftest.py leaves tests/test_pymer4.py out of the
# main suite wherever pymer4 cannot be imported.
PYMER4_VENV  ?= .venv-pymer4
PYMER4_PY    := $(PYMER4_VENV)/bin/python
PYMER4_STAMP := $(PYMER4_VENV)/.installed

$(PYMER4_STAMP): pyproject.toml
	@test -x $(PYMER4_PY) || $(PYTHON) -m venv $(PYMER4_VENV)
	$(PYMER4_PY) -m pip install --quiet --upgrade pip
	$(PYMER4_PY) -m pip install --quiet -e ".[test,pymer4]"
	@touch $(PYMER4_STAMP)

# Fails (does not skip) when pymer4 cannot be imported.
test-pymer4: system-deps $(PYMER4_STAMP)
	$(PYMER4_PY) -c 'import pymer4, pandas; print("pymer4", pymer4.__version__, "pandas", pandas.__version__)'
	$(PYMER4_PY) -m pytest tests/test_pymer4.py $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/bench_r_engine.py

clean:
	rm -rf $(VENV) $(PYMER4_VENV) build *.egg-info .pytest_cache
