# Every target names a recipe or a script; the logic lives in train/ and transfer/.
# `make test` and the run targets install into .venv first when needed (`make setup`).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-slow train-small transfer bench tiny-family clean

setup: $(VENV)/.installed

# torch first and pinned: its CPU wheel is local here, and deepspeed's sdist build imports it.
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[deepspeed,dev]"
	touch $@

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

train-small: setup
	@echo "make train-small: not wired up yet (issue 3: GRPO recipes and the tiny family)" >&2; exit 1

transfer: setup
	@echo "make transfer: not wired up yet (issue 5: benchmark evaluation with RAST)" >&2; exit 1

bench: setup
	@echo "make bench: not wired up yet (issue 4: RAST engine benchmark)" >&2; exit 1

clean:
	rm -rf $(VENV) outputs .pytest_cache
