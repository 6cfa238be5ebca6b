"""The README stays true to the code: every setting documented, the quickstart is the two commands."""

from __future__ import annotations

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
    import json

    serving = README.split("## Serving the archive", 1)[1].split("\n## ", 1)[0]
    config = json.loads(serving.split("```json", 1)[1].split("```", 1)[0])
    server = config["mcpServers"]["podcast-archive"]
    assert server["command"] == "uv" and server["args"][0] == "run" and server["args"][-2:] == ["gdr", "mcp"]
    screenshot = serving.split("](", 1)[1].split(")", 1)[0]
    assert (REPO_ROOT / screenshot).stat().st_size > 10_000
