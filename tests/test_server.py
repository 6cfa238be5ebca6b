"""`gdr server start` brings up a real Prefect server (all services on) + worker; the deployment runs through
them, a failed or late run is sent to NOTIFY_URL, and a restart keeps what the user set in the UI."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import pytest

from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import app_environment, free_port, make_audio
from tests.support.fakeapi import LISTEN, deepgram_error, for_audio
from tests.support.paths import REPO_ROOT

BIN = Path(sys.executable).parent


class Receiver:
    """A local HTTP endpoint standing in for Slack or any webhook: every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.put(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, subject: str, timeout: float = 120) -> dict[str, Any]:
        """The first message with this subject. Others (a run of a loaded machine may also be Late before a
        worker takes it) are passed over: the order of two automations' messages is not guaranteed."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                body = self.bodies.get(timeout=left)
            except queue.Empty:
                break
            if body["subject"] == subject:
                return body
            seen.append(body["subject"])
        raise AssertionError(f"no message {subject!r} within {timeout} s; received {seen}")


@pytest.fixture
def server(settings, fake_api, tmp_path) -> Iterator[tuple[dict[str, str], str, Receiver]]:
    receiver = Receiver()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        **app_environment(settings, fake_api),
        "PREFECT_HOME": str(settings.gdr_home / "prefect-home"),
        "NOTIFY_URL": receiver.url,
        "PREFECT_API_SERVICES_LATE_RUNS_AFTER_SECONDS": "5",  # Late sooner than the default 15 s, for the test
        "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{free_port()}",
    }
    started = subprocess.run([BIN / "gdr", "server", "start", "--port", str(port)], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        assert {name: [Path(words[0]).name, words[1]] for name, words in server_status(env).items()} == {
            "server": ["prefect", "server"], "scheduler": ["dask", "scheduler"], "worker": ["prefect", "worker"],
            "episodes": ["dask", "worker"]}
        # The UI is served at --port and told that its API is there too (not at the default 4200).
        ui_settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=30).json()
        assert ui_settings["api_url"] == f"http://127.0.0.1:{port}/api", ui_settings
        yield {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}, str(port), receiver
    finally:
        stopped = subprocess.run([BIN / "gdr", "server", "stop"], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        assert "server" in stopped.stdout, stopped.stdout + stopped.stderr
        receiver.server.shutdown()
    assert server_status(env) == {}


def server_status(env: dict[str, str]) -> dict[str, list[str]]:
    """What `gdr server status` says runs: for each name, the `prefect` or `dask` subcommand its pid really runs
    ({} when it says "not running")."""
    shown = subprocess.run([BIN / "gdr", "server", "status"], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    if shown.stdout.strip() == "not running":
        return {}
    running = {}
    for name, pid in re.findall(r"(\w+) \(pid (\d+)\)", shown.stdout):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if argv[0].startswith("dask "):  # Dask's scheduler names itself: "dask scheduler [tcp://...]"
            running[name] = argv[0].split()[:2]
            continue
        tool_at = next(i for i, arg in enumerate(argv) if arg.endswith(("prefect", "dask")))
        running[name] = argv[tool_at : tool_at + 2]
    return running


def prefect(env: dict[str, str], *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "prefect", *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


def read_deployment(env: dict[str, str]) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name("ingest/default")


@pytest.mark.slow
def test_deployment_runs_and_a_failed_or_late_night_is_sent_to_notify_url(settings, fake_api, server) -> None:
    env, port, receiver = server
    for i in range(2):
        make_audio(settings.audio_dir / f"S-{i}.mp3", 15, 500 + 50 * i)
    settings.episodes_file.write_text(json.dumps([{"episode_id": f"S-{i}", "file_name": f"S-{i}.mp3"} for i in range(2)]))
    deployment = read_deployment(env)
    assert deployment.parameters == {"episode_ids": None, "max_parallel": None, "force": False}
    assert deployment.version == subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                                                capture_output=True, text=True).stdout.strip()

    run = prefect(env, "deployment", "run", "ingest/default", "--watch", "--watch-timeout", "300")
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
    assert len(fake_api.requests_to(LISTEN)) == 2
    with Database.from_settings(settings) as db:
        assert {e.episode_id: e.status for e in episode_store.list_episodes(db)} == {"S-0": "processed", "S-1": "processed"}

    # A failed night: S-1's audio changed, and Deepgram rejects the new file.
    make_audio(settings.audio_dir / "S-1.mp3", 16, 720)
    fake_api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"),
                     when=for_audio(settings.audio_dir / "S-1.mp3"))
    failed = prefect(env, "deployment", "run", "ingest/default", "--flow-run-name", "failed-night",
                     "--watch", "--watch-timeout", "300")
    assert failed.returncode != 0, failed.stdout
    sent = receiver.wait_for("ingest failed-night: Failed")
    assert "S-1: PermanentProviderError: Deepgram answered HTTP 400 (Bad Request): corrupt or unsupported data" in sent["body"]
    assert f"http://127.0.0.1:{port}/runs/flow-run/" in sent["body"], sent  # a link to the run in the UI

    # A late night: no worker to take the run.
    stopped = subprocess.run([BIN / "gdr", "worker", "stop"], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert "worker" in stopped.stdout, stopped.stdout + stopped.stderr
    assert prefect(env, "deployment", "run", "ingest/default", "--flow-run-name", "late-night").returncode == 0
    receiver.wait_for("ingest late-night: Late")


@pytest.mark.slow
def test_a_paused_schedule_stays_paused_when_the_server_starts_again(settings, server) -> None:
    env, port, _ = server
    deployed = read_deployment(env)
    [schedule] = deployed.schedules
    assert schedule.active
    # prefect.yaml's nightly schedule and one run at a time, as the server holds them (README: "runs nightly at
    # 02:00 America/New_York ... with `concurrency_limit: 1`").
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * *", "America/New_York")
    assert deployed.global_concurrency_limit.limit == 1 and deployed.work_pool_name == "default"
    paused = prefect(env, "deployment", "schedule", "pause", "ingest/default", str(schedule.id))
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert [s.active for s in read_deployment(env).schedules] == [False]
    again = subprocess.run([BIN / "gdr", "server", "start", "--port", port], env=env, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s.active for s in read_deployment(env).schedules] == [False]
