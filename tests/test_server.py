"""`gdr server start` brings up a real Prefect server + worker; the deployment runs through them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.conftest import REPO_ROOT
from tests.support.builders import app_environment, free_port, make_audio
from tests.support.fakeapi import LISTEN

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_deployment_runs_through_server_and_worker(settings, fake_api) -> None:
    for i in range(2):
        make_audio(settings.audio_dir / f"S-{i}.mp3", 15, 500 + 50 * i)
    settings.episodes_file.write_text(json.dumps([{"episode_id": f"S-{i}", "file_name": f"S-{i}.mp3"} for i in range(2)]))
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        **app_environment(settings, fake_api),
        "PREFECT_HOME": str(settings.gdr_home / "prefect-home"),
    }
    started = subprocess.run([BIN / "gdr", "server", "start", "--port", str(port)], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        run = subprocess.run(
            [BIN / "prefect", "deployment", "run", "ingest/default", "--watch", "--watch-timeout", "300"],
            env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}, cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=400,
        )
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
    finally:
        stopped = subprocess.run([BIN / "gdr", "server", "stop"], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert "server" in stopped.stdout and "worker" in stopped.stdout, stopped.stdout + stopped.stderr
    assert len(fake_api.requests_to(LISTEN)) == 2
    with Database.from_settings(settings) as db:
        assert {e.episode_id: e.status for e in episode_store.list_episodes(db)} == {"S-0": "processed", "S-1": "processed"}
