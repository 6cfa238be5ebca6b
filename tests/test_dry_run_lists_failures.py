"""`gdr ingest --dry-run` lists every episode the run would touch: those it would process, and those it would
fail (no audio file, an empty one, audio that cannot be decoded) or skip, each with why."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.settings import Settings
from tests.support.builders import make_audio


def test_dry_run_lists_the_episodes_that_will_fail_with_why(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"DATABASE_URL": settings.external_database_url(), "GDR_HOME": str(settings.gdr_home),
                        "EPISODES_FILE": str(settings.episodes_file), "AUDIO_DIR": str(settings.audio_dir),
                        "TRANSCRIBER": "local", "EMBEDDER": "local"}.items():
        monkeypatch.setenv(name, value)
    make_audio(settings.audio_dir / "good.mp3", 12, 440)
    (settings.audio_dir / "empty.mp3").write_bytes(b"")
    (settings.audio_dir / "garbage.mp3").write_bytes(b"not audio at all " * 300)
    settings.episodes_file.write_text(json.dumps([
        {"episode_id": "D-1", "file_name": "good.mp3", "title": "Good"},
        {"episode_id": "D-2", "file_name": "empty.mp3", "title": "Empty"},
        {"episode_id": "D-3", "file_name": "missing.mp3", "title": "Missing"},
        {"episode_id": "D-4", "file_name": "garbage.mp3", "title": "Garbage"},
    ]))
    result = CliRunner().invoke(app, ["ingest", "--dry-run"], terminal_width=400)
    assert result.exit_code == 0, result.output
    rows = {cells[0]: cells[1:] for line in result.stdout.splitlines() if line.count("│") >= 6
            for cells in [[c.strip() for c in line.split("│")[1:-1]]] if cells[0]}  # not a cell's wrapped line
    assert rows.keys() == {"D-1", "total"} and rows["D-1"][:2] == ["Good", "0.20"], rows
    listed = result.stdout.split("would fail or skip 3 episodes:\n")[1].splitlines()
    assert [line.split(": ")[0] for line in listed] == ["  D-2 (Empty)", "  D-3 (Missing)", "  D-4 (Garbage)"], listed
    assert listed[0].endswith("field 'file_name': audio file is empty (0 bytes): " + str(settings.audio_dir / "empty.mp3"))
    assert listed[1].endswith("field 'file_name': audio file not found: " + str(settings.audio_dir / "missing.mp3"))
    assert listed[2].startswith(f"  D-4 (Garbage): will fail: {settings.audio_dir / 'garbage.mp3'}: cannot decode the audio")
