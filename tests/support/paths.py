"""Where the repository and its test data are, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
