# Two commands for a newcomer: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export PYTHONUNBUFFERED := 1

.PHONY: install run lint test test-fast bench mutate clean

$(UV):
	python3 -m pip install --quiet --user "uv==$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"

# Where Python may not write .pyc files (PYTHONDONTWRITEBYTECODE, as in many containers) every process would
# compile its imports again (~1.3 s more CPU per `gdr search`), so the venv is compiled here (first time ~45 s
# on 2 cores, then a ~2 s check per make). Elsewhere Python caches what it imports and this would only cost.
install: $(UV)
	$(UV) sync --locked --quiet $(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode)

run: install
	$(UV) run gdr db init
	$(UV) run gdr ingest
	$(UV) run gdr search "which mite spreads deformed wing virus" -k 3
	$(UV) run gdr search "who coined the word transistor" -k 3

# The linter and the type checker on src/ (their settings: pyproject [tool.ruff], [tool.mypy]); part of `make test`.
lint: install
	$(UV) run ruff check src
	$(UV) run mypy

test: install lint
	$(UV) run pytest

# The everyday tier (pytest marker `fast`, TESTING.md): pure logic and the fake HTTP servers; no Postgres, no
# Prefect server, no model, no child process. `make test` runs everything, these included.
test-fast: install
	$(UV) run pytest -m fast

bench: install
	$(UV) run python -m bench.run_all

# Mutation testing of the pure modules (pyproject [tool.mutmut]; scores in TESTING.md). Not part of `make test`.
# One child by default: the machine's cores are shared (MUTATE_CHILDREN=2 on a quiet one).
MUTATE_CHILDREN ?= 1
mutate: install
	rm -rf mutants
	$(UV) run mutmut run --max-children $(MUTATE_CHILDREN)
	$(UV) run mutmut results

clean:
	-$(UV) run gdr db stop
	rm -rf .gdr data/transcripts
