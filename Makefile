VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format install clean bench

demo: $(STAMP)
	$(PY) -m starft_cli demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

install: $(STAMP)

# pip's own chatter goes to $(VENV)/install.log (printed if the install fails).
$(STAMP): pyproject.toml .ci/constraints.txt
	@echo "installing starft and its dependencies into $(VENV) (about a minute; log: $(VENV)/install.log)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@$(PY) -m pip install -q -c .ci/constraints.txt -e '.[test]' >> $(VENV)/install.log 2>&1 \
		|| (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/cli_startup.py

clean:
	rm -rf $(VENV) build dist *.egg-info
