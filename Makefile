# The two commands of the README. Both are idempotent: they create .venv with the machine's
# python3 on first use, (re)install veil when pyproject.toml changes, and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_OUT ?= reports/demo

.PHONY: demo test lint typecheck bench clean he-proto deploy-proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml constraints.txt hatch_build.py src/veil/privacy/_staircase.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[analytics,federated,he,reports]'
	@touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt hatch_build.py src/veil/privacy/_staircase.c | $(BIN)/python
	scripts/ensure-system-deps.sh
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	@touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/veil demo --out $(DEMO_OUT)

# The ledger's contract tests run against a real PostgreSQL server that the test session starts;
# scripts/ensure-system-deps.sh installs Debian's server (and Java, for Spark) if missing.
test: $(VENV)/.test-installed
	scripts/ensure-system-deps.sh
	$(BIN)/ruff check src tests benchmarks hatch_build.py
	$(BIN)/ruff format --check src tests benchmarks hatch_build.py
	$(BIN)/mypy
	VEIL_REQUIRE_ALL=1 $(BIN)/python -m pytest -q

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/samplers.py
	$(BIN)/python benchmarks/ledger_throughput.py

# The encrypted scoring service's protobuf code is committed; regenerate it after editing the
# schema (grpcio-tools is a development tool, not a dependency).
he-proto: $(VENV)/.test-installed
	$(BIN)/python -m pip install --quiet -c constraints.txt grpcio-tools
	cd src/veil/he/proto && ../../../../$(BIN)/python -m grpc_tools.protoc -I. \
		--python_out=. --pyi_out=. scoring.proto

# The same for the federation's coordinator service (src/veil/deploy/proto/federation.proto).
deploy-proto: $(VENV)/.test-installed
	$(BIN)/python -m pip install --quiet -c constraints.txt grpcio-tools
	cd src/veil/deploy/proto && ../../../../$(BIN)/python -m grpc_tools.protoc -I. \
		--python_out=. --pyi_out=. federation.proto

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache reports
