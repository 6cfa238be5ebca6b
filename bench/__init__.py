"""Benchmarks: `make bench` (= `uv run python -m bench.run_all`) writes BENCHMARKS.md; see bench/run_all.py."""
