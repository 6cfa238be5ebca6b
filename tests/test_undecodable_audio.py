"""An audio file that cannot be decoded is remembered by its content: a plain `gdr ingest` skips it (saying why,
exit 0) until the file or the transcriber changes, `gdr status` says so, and `--force` tries it again."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.ingest.plan import plan_episodes
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import run_ingest


@pytest.fixture
def garbage(settings: Settings, monkeypatch: pytest.MonkeyPatch, prefect_api) -> Settings:
    environment = {"DATABASE_URL": settings.external_database_url(), "GDR_HOME": str(settings.gdr_home),
                   "EPISODES_FILE": str(settings.episodes_file), "AUDIO_DIR": str(settings.audio_dir),
                   "TRANSCRIBER": "local", "EMBEDDER": "local", "TRANSCRIPTS_DIR": str(settings.transcripts_dir)}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings.audio_dir.mkdir(parents=True)
    (settings.audio_dir / "U-1.mp3").write_bytes(b"not audio at all " * 300)
    settings.episodes_file.write_text(json.dumps([{"episode_id": "U-1", "file_name": "U-1.mp3"}]))
    return Settings(_env_file=None)


def planned(settings: Settings, force: bool = False):
    with Database.from_settings(settings) as db:
        return plan_episodes(settings, db, force=force)


def test_undecodable_audio_is_skipped_until_the_file_changes(garbage: Settings) -> None:
    assert not run_ingest().is_completed()  # the first try fails, for real, in the decoder
    plan = planned(garbage)
    assert plan.jobs == [] and "could not be decoded by the local transcriber" in plan.skipped["U-1"], plan

    result = CliRunner().invoke(app, ["ingest"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "U-1 skipped: its audio could not be decoded" in result.output

    status = CliRunner().invoke(app, ["status", "--json"])
    [row] = json.loads(status.stdout)["episodes"]
    assert row["status"] == "failed" and "not retried while its audio file stays the same" in row["undecodable"], row

    assert [job.episode_id for job in planned(garbage, force=True).jobs] == ["U-1"]  # --force tries again
    (garbage.audio_dir / "U-1.mp3").write_bytes(b"other bytes, still not audio " * 300)
    assert [job.episode_id for job in planned(garbage).jobs] == ["U-1"]  # a new file is tried again


def test_another_transcriber_tries_it_again(garbage: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not run_ingest().is_completed()
    monkeypatch.setenv("TRANSCRIBER", "deepgram")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "test-key")
    assert [job.episode_id for job in planned(Settings(_env_file=None)).jobs] == ["U-1"]
