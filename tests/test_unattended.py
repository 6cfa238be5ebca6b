"""What a person following a run sees: the run's progress artifact advancing, and `gdr ingest`'s terminal
output (no telemetry notice, each failure's reason in full, once, no traceback)."""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from gent_disagreement_rag.settings import Settings
from tests.support.builders import run_ingest, tone_catalogue
from tests.support.fakeapi import LISTEN, FakeAPI, deepgram_error, for_audio
from tests.support.terminal import run_on_terminal

GDR = Path(sys.executable).parent / "gdr"


@pytest.fixture
def three_episodes(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, prefect_api) -> list[str]:
    return tone_catalogue(settings, fake_api, monkeypatch, {f"P-{i}": (10 + i, 350 + 70 * i) for i in range(3)})


def progress_values(flow_run_id: str | None = None) -> list[float]:
    """Every `ingest-progress` artifact's current value (of one run, when given)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])) if flow_run_id else None
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-progress"])),
                                          flow_run_filter=runs)
    return [float(a.data) for a in artifacts]


def test_the_progress_artifact_advances_during_a_run_and_ends_at_100(three_episodes, fake_api: FakeAPI) -> None:
    fake_api.deepgram_latency = (2.0, 0.0)
    before = set(progress_values())
    seen: list[float] = []
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            seen.extend(v for v in progress_values() if v not in before)
            time.sleep(0.3)

    watcher = threading.Thread(target=contextvars.copy_context().run, args=(watch,))  # this test's Prefect API
    watcher.start()
    try:
        state = run_ingest(max_parallel=1)
    finally:
        finished.set()
        watcher.join()
    assert state.is_completed(), state.message
    assert any(0 < v < 100 for v in seen), seen  # seen part-way, while episodes were still running
    assert progress_values(str(state.state_details.flow_run_id)) == [100.0]


def test_gdr_ingest_prints_each_failure_once_in_full_and_no_telemetry_notice(
    three_episodes, settings: Settings, fake_api: FakeAPI, tmp_path: Path
) -> None:
    fake_api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "could not decode the audio"),
                     when=for_audio(settings.audio_dir / "P-1.mp3"))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "fresh-prefect-home")}  # the notice is shown once per home
    env.pop("PREFECT_API_URL", None)  # as a user runs it: a temporary server of its own
    env.pop("DO_NOT_TRACK", None)
    # A terminal, as a user's: Prefect shows its notice only to interactive terminals.
    returncode, drawn = run_on_terminal([str(GDR), "ingest", "-j", "1"], env, tmp_path)
    output = drawn.replace("\r", "")
    assert returncode == 1, output
    reason = "PermanentProviderError: Deepgram answered HTTP 400 (Bad Request): could not decode the audio"
    assert output.count(f"P-1: {reason}") == 1, output
    assert "anonymous usage" not in output and "Traceback" not in output, output
    assert output.rstrip().splitlines()[-1].startswith("2/3 episodes processed; 1 failed or skipped"), output
    assert "Traceback" in (settings.gdr_home / "logs" / "ingest.log").read_text()  # the traceback is in the log
