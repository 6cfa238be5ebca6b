"""What `gdr ingest` says of up-to-date episodes: a named one (`-e`) is up to date unless `--force`, and
counts read as English ("1 episode")."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.settings import Settings
from tests.support.builders import run_ingest, tone_catalogue
from tests.support.fakeapi import LISTEN, FakeAPI


@pytest.fixture
def one_processed(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, prefect_api) -> str:
    [episode] = tone_catalogue(settings, fake_api, monkeypatch, {"UP-1": (20, 330)}, {"0": "Ann"})
    assert run_ingest().is_completed()
    return episode


def test_a_named_up_to_date_episode_is_not_run_again_without_force(one_processed: str, fake_api: FakeAPI) -> None:
    requests = len(fake_api.requests_to(LISTEN))
    result = CliRunner().invoke(app, ["ingest", "-e", one_processed], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert result.output == f"{one_processed} is up to date (--force runs it again from cache)\n"
    forced = CliRunner().invoke(app, ["ingest", "-e", one_processed, "--force"], terminal_width=300)
    assert forced.exit_code == 0 and "1/1 episodes processed" in forced.output, forced.output
    assert len(fake_api.requests_to(LISTEN)) == requests  # --force ran it from the stage cache


def test_counts_agree_with_their_noun(one_processed: str) -> None:
    result = CliRunner().invoke(app, ["ingest"], terminal_width=300)
    assert result.output == "nothing to do: 1 episode up to date (--force runs them again from cache)\n"
    assert CliRunner().invoke(app, ["status"]).output.splitlines()[0].strip() == "1 episode"
