"""`gdr ingest` without a terminal (CI, `make run > log`): one plain line per event as it happens (the
orchestration starting, each episode queued, running, each stage, its end), each failure's reason once on its own
line, then the summary. A real `gdr` process writing to a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gent_disagreement_rag.settings import Settings
from tests.support.builders import app_environment, make_audio
from tests.support.fakeapi import FakeAPI

GDR = Path(sys.executable).parent / "gdr"


def test_without_a_terminal_each_event_is_one_plain_line(settings: Settings, fake_api: FakeAPI, prefect_api: str,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_audio(settings.audio_dir / "LOG-1.mp3", 20, 330)
    settings.episodes_file.write_text(json.dumps([{"episode_id": "LOG-1", "file_name": "LOG-1.mp3"},
                                                  {"episode_id": "LOG-2", "file_name": "gone.mp3"}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= app_environment(settings, fake_api) | {"PREFECT_API_URL": prefect_api,
                                                   "PREFECT_HOME": str(tmp_path / "prefect-home")}
    log = tmp_path / "ingest.log"
    with open(log, "w") as out:
        result = subprocess.run([str(GDR), "ingest"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                text=True, timeout=600)
    lines = log.read_text().splitlines()
    assert result.returncode == 1, lines  # LOG-2 has no audio
    events = lines[: lines.index(next(line for line in lines if line.startswith("ingest summary")))]
    missing = f"LOG-2 failed: {settings.episodes_file}: episode LOG-2: field 'file_name': audio file not found: " \
              f"{settings.audio_dir / 'gone.mp3'}"
    assert events == [
        "starting the orchestration server (Prefect)",
        "LOG-1 queued", "LOG-1 running",
        "LOG-1 transcribe", "LOG-1 transcribe: 20/20 s of audio", "LOG-1 voices", "LOG-1 name", "LOG-1 format",
        "LOG-1 export", "LOG-1 embed", "LOG-1 store",
        events[11],
        missing,
    ], events
    assert events[11].startswith("LOG-1 processed: ") and events[11].endswith(" s"), events[11]
    assert sum("audio file not found" in line for line in lines) == 1, lines  # the reason once, on a line of its own
    assert lines[-1] == "1/2 episodes processed; 1 failed or skipped", lines
