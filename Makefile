# Two commands for a newcomer: `make run` and `make test`. Both install what they need first.
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export PYTHONUNBUFFERED := 1

.PHONY: install run test bench clean

$(UV):
	python3 -m pip install --quiet --user "uv==$(UV_VERSION)" || python3 -m pip install --quiet "uv==$(UV_VERSION)"

install: $(UV)
	$(UV) sync --locked --quiet

run: install
	$(UV) run gdr db init
	$(UV) run gdr ingest
	$(UV) run gdr search "which mite spreads deformed wing virus" -k 3
	$(UV) run gdr search "who coined the word transistor" -k 3

test: install
	$(UV) run pytest

bench: install
	$(UV) run python -m bench.run_all

clean:
	-$(UV) run gdr db stop
	rm -rf .gdr data/transcripts
