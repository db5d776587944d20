# Two commands do all the set-up: `make demo` (the main job) and `make test` (the test suite).
# Both create or reuse the virtual environment $(VENV), install requirements.txt into it (which ends with the project itself
# in editable mode, `-e .`, so `import taming` works from any folder) once; the stamp file is keyed by
# the hash of requirements.txt and pyproject.toml and the clone's path. Activate it for your own commands: `source .venv/bin/activate`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# (the clone's path counts too: the editable install points at one clone)
REQ_HASH := $(shell (sha256sum requirements.txt pyproject.toml; echo $(CURDIR)) | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q
