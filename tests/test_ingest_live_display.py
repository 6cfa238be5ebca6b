"""`gdr ingest` on a terminal says what it is doing from the start (starting the database, planning, starting the
orchestration server; then the models, while the first episodes start) instead of an empty table. A real `gdr` process on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gent_disagreement_rag.settings import Settings
from tests.support.builders import app_environment, make_audio
from tests.support.fakeapi import FakeAPI
from tests.support.terminal import run_on_terminal

GDR = Path(sys.executable).parent / "gdr"


def test_the_live_display_says_what_the_run_is_doing_before_any_episode_starts(
    settings: Settings, fake_api: FakeAPI, prefect_api: str, tmp_path: Path
) -> None:
    make_audio(settings.audio_dir / "TTY-1.mp3", 20, 330)
    settings.episodes_file.write_text(json.dumps([{"episode_id": "TTY-1", "file_name": "TTY-1.mp3"}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= app_environment(settings, fake_api) | {"PREFECT_API_URL": prefect_api,
                                                   "PREFECT_HOME": str(tmp_path / "prefect-home")}
    _, drawn = run_on_terminal([str(GDR), "ingest"], env | {"COLUMNS": "120", "LINES": "40", "TERM": "xterm"}, tmp_path)
    phases = ["starting the database…", "planning…", "starting the orchestration server (Prefect)…"]
    where = [drawn.find(phase) for phase in phases]
    assert -1 not in where and where == sorted(where), (where, drawn[-3000:])
    assert where[-1] < drawn.find("TTY-1") < drawn.find("ingest summary"), drawn[-3000:]
