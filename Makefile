# Two commands do everything on a fresh machine:
#   make run   installs what is missing, creates a dev token and keys in .dev/, serves on 127.0.0.1:8080
#   make test  installs what is missing and runs the whole suite (lint, types, tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEV := .dev
APPLIANCE_TEST_PG_DSN ?= postgresql://postgres@127.0.0.1:5432/test
export APPLIANCE_TEST_PG_DSN

.PHONY: run test test-fast test-crash lint bench bench-quick system-deps clean-dev

system-deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$(NEED_TEST_TOOLS)" ]; then \
	  command -v promtool >/dev/null || missing="$$missing prometheus"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v jq >/dev/null || missing="$$missing jq"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(DEV)/appliance.toml: | system-deps $(VENV)/.installed
	$(BIN)/appliance dev-init $(DEV)

run: system-deps $(VENV)/.installed $(DEV)/appliance.toml
	@echo ""
	@echo "Service: http://127.0.0.1:8080  (JWKS /.well-known/jwks.json, metrics /metrics)"
	@echo "Try a mint in another shell:"
	@echo "  export APPLIANCE_CONFIG=$$PWD/$(DEV)/appliance.toml PATH=$$PWD/$(BIN):\$$PATH"
	@echo "  appliance mint request --operator alice --key $(DEV)/operators/alice.pem --to \$$(grep -m1 address $(DEV)/policy.toml | cut -d'\"' -f2) --amount 250000000000"
	@echo "  (then approve as bob and carol; see README.md, 'Walk-through')"
	@echo ""
	@$(BIN)/appliance --config $(DEV)/appliance.toml init >/dev/null  # idempotent: upgrades an older .dev/
	$(BIN)/appliance --config $(DEV)/appliance.toml serve

lint: $(VENV)/.installed
	$(BIN)/ruff check appliance tests bench
	$(BIN)/mypy

test: NEED_TEST_TOOLS=1
test: system-deps $(VENV)/.installed lint
	$(BIN)/pytest -q --durations=15

# The inner loop: everything except the tests marked slow (real processes, several instances, big sweeps).
test-fast: system-deps $(VENV)/.installed
	$(BIN)/pytest -q -m "not slow" --durations=5

# The crash-safety suite at full size: 220 SIGKILLs along the signing paths (about 15 minutes).
test-crash: system-deps $(VENV)/.installed
	APPLIANCE_CRASH_ROUNDS=220 $(BIN)/pytest -q tests/reliability

bench: system-deps $(VENV)/.installed
	$(BIN)/python -m bench

bench-quick: system-deps $(VENV)/.installed
	$(BIN)/python -m bench --quick

clean-dev:
	rm -rf $(DEV)
