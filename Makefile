# Two commands do all the set-up: `make demo` (the main job) and `make test` (the test suite).
# Both create or reuse the virtual environment $(VENV), install requirements.txt into it and the project itself
# in editable mode (`pip install -e .`, so `import taming` works from any folder) once; the stamp file is keyed by
# the hash of requirements.txt. Activate it for your own commands: `source .venv/bin/activate`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q
