"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM stop a real `gdr ingest` with
episodes in flight: no new episode starts, the summary so far is printed, the exit code is 130, nothing is
half-written, and the next run does only what is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import app_environment, tone_catalogue
from tests.support.fakeapi import LISTEN, FakeAPI, sha256_of

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[1]
IDS = [f"C-{i}" for i in range(5)]


@pytest.fixture
def world(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    tone_catalogue(settings, fake_api, monkeypatch, {e: (12, 500 + 37 * i) for i, e in enumerate(IDS)}, {"0": "Ann"})
    return {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, **app_environment(settings, fake_api)}


def _start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([BIN / "gdr", "ingest", "-j", "2"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_transcriptions_in_flight(api: FakeAPI, proc: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 300
    while sum(r.ended is None for r in api.requests_to(LISTEN)) < count:
        assert proc.poll() is None and time.monotonic() < deadline, "no transcriptions in flight"
        time.sleep(0.2)


def _statuses(settings: Settings) -> dict[str, tuple[str, int]]:
    with Database.from_settings(settings) as db:
        return {r.episode_id: (r.status, r.segments) for r in episode_store.list_episodes(db)}


def _listened(api: FakeAPI, settings: Settings) -> dict[str, int]:
    shas = [sha256_of(r.body) for r in api.requests_to(LISTEN)]
    return {e: shas.count(sha256_of(settings.audio_dir / f"{e}.mp3")) for e in IDS}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_lets_running_episodes_end_starts_no_more_and_exits_130(settings, fake_api, world, signum) -> None:
    fake_api.deepgram_latency = (4.0, 0.0)  # shorter than the grace period: the running episodes end
    proc = _start(world)
    _wait_for_transcriptions_in_flight(fake_api, proc, 2)
    running = {e for e, n in _listened(fake_api, settings).items() if n}

    os.killpg(proc.pid, signum)
    output, _ = proc.communicate(timeout=300)

    assert proc.returncode == 130, output
    assert "stopping: no new episodes start" in output and "run interrupted (3 episodes not started)" in output, output
    statuses = _statuses(settings)
    assert {e for e, (status, _) in statuses.items() if status == "processed"} == running
    assert all(statuses[e] == ("pending", 0) for e in IDS if e not in running), statuses
    assert _listened(fake_api, settings) == {e: int(e in running) for e in IDS}

    rerun = subprocess.run([BIN / "gdr", "ingest"], env=world, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _listened(fake_api, settings) == {e: 1 for e in IDS}  # only what was left


def test_running_episodes_past_the_grace_period_are_left_pending_and_a_second_ctrl_c_is_not_needed(
        settings, fake_api, world) -> None:
    fake_api.deepgram_latency = (60.0, 0.0)
    proc = _start(world)
    _wait_for_transcriptions_in_flight(fake_api, proc, 2)

    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=300)

    assert proc.returncode == 130, output
    assert "run interrupted; 2 episodes cut short" in output, output
    assert all(status == ("pending", 0) for status in _statuses(settings).values()), _statuses(settings)
    fake_api.deepgram_latency = (0.5, 0.0)
    rerun = subprocess.run([BIN / "gdr", "ingest"], env=world, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert {status for status, _ in _statuses(settings).values()} == {"processed"}


def test_a_second_ctrl_c_stops_at_once(settings, fake_api, world) -> None:
    fake_api.deepgram_latency = (60.0, 0.0)
    proc = _start(world)
    _wait_for_transcriptions_in_flight(fake_api, proc, 2)

    os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 120
    output = ""
    while "stopping: no new episodes start" not in output:  # the first one was taken in
        assert time.monotonic() < deadline, output
        output += os.read(proc.stdout.fileno(), 4096).decode()
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=300)  # also the end of its output: no child of it is left holding the pipe

    assert proc.returncode == 130, output + rest
    assert "stopped at once" in output + rest
