"""The docs stay true to the code: every setting documented, the quickstart is the two commands, and README's
benchmark figures and BENCHMARKS.md are what bench/report.py makes from bench/results.json."""

from __future__ import annotations

import json

import pytest

from gent_disagreement_rag.settings import settings_table
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.fast  # no Postgres, no Prefect, no Whisper, no subprocess (TESTING.md)

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    """Regenerate with `uv run python -m gent_disagreement_rag.settings`."""
    assert settings_table() in README.split("## Configuration", 1)[1].split("\n## ", 1)[0]


def test_quickstart_is_make_run_and_make_test() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in quickstart.strip().splitlines()] == ["make run", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    """Its last command, not a mention in a comment."""
    lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == "make test"


def test_the_mcp_configuration_snippet_is_json_that_runs_gdr_mcp_and_the_page_screenshot_exists() -> None:
    serving = README.split("## Serving the archive", 1)[1].split("\n## ", 1)[0]
    config = json.loads(serving.split("```json", 1)[1].split("```", 1)[0])
    server = config["mcpServers"]["podcast-archive"]
    assert server["command"] == "uv" and server["args"][0] == "run" and server["args"][-2:] == ["gdr", "mcp"]
    screenshot = serving.split("](", 1)[1].split(")", 1)[0]
    assert (REPO_ROOT / screenshot).stat().st_size > 10_000


def test_the_readme_benchmark_figures_are_generated_from_the_results() -> None:
    """Regenerate with `uv run python -m bench.run_all --report-only` (it rewrites BENCHMARKS.md too)."""
    from bench.report import readme_figures

    results = json.loads((REPO_ROOT / "bench" / "results.json").read_text())
    benchmarks = README.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    assert readme_figures(results) in benchmarks


def test_benchmarks_md_is_the_template_filled_from_the_results() -> None:
    """A change to bench/BENCHMARKS.template.md goes through the generator, never into BENCHMARKS.md by hand.
    Regenerate with `uv run python -m bench.run_all --report-only`."""
    from bench.report import TEMPLATE, figures, fill

    results = json.loads((REPO_ROOT / "bench" / "results.json").read_text())
    expected = fill(TEMPLATE.read_text(), figures(results)).rstrip() + "\n"
    assert (REPO_ROOT / "BENCHMARKS.md").read_text() == expected
