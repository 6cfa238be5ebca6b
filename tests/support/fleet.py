"""A fleet of two "machines" on this host, as README's scaling section sets one up: the server machine
(`gdr server start`: Prefect server, Dask scheduler, its Prefect and Dask workers) and a second one with only
PREFECT_API_URL (`gdr worker start`), each with its own GDR_HOME. The database is the test session's Postgres,
the providers the fake APIs. A machine is killed by SIGKILL of every process that runs with its GDR_HOME."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.attempts import Attempt, attempts_of
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.storage.schema import migrate
from tests.support.builders import app_environment, free_port, make_audio
from tests.support.fakeapi import EMBEDDINGS, LISTEN, FakeAPI, deepgram_response, filler_turns, sha256_of

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TONES = itertools.count(300, 11)  # Hz: no two episodes of a session share audio (or its cache)
SERVER, SECOND = "w1", "w2"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 300, every: float = 0.5) -> Any:
    """`condition()`'s first truthy value; fails naming `what` after a generous deadline."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(every)
    return value


@dataclass
class Fleet:
    settings: Settings
    api: FakeAPI
    api_url: str
    scheduler: str
    homes: dict[str, Path]  # machine -> its GDR_HOME
    server_env: dict[str, str]

    def env(self, **extra: str) -> dict[str, str]:
        """A machine that knows only where the Prefect server is."""
        return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}

    def gdr(self, *args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "gdr"), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def machine_env(self, name: str, slots: int = 2) -> dict[str, str]:
        if name == SERVER:
            return {**self.server_env, "MAX_PARALLEL_EPISODES": str(slots)}
        home = self.homes[name]
        return self.env(GDR_HOME=str(home), PREFECT_HOME=str(home / "prefect"), WORKER_NAME=name,
                        MAX_PARALLEL_EPISODES=str(slots))

    def start_machine(self, name: str, slots: int = 2) -> None:
        started = self.gdr("worker", "start", env={**self.machine_env(name, slots), "PREFECT_API_URL": self.api_url})
        assert started.returncode == 0, started.stdout + started.stderr

    def kill_machine(self, name: str) -> list[int]:
        """SIGKILL every process of the machine's workers and whatever they run, at once. On the server
        machine the Prefect server and the Dask scheduler are spared: they are the fleet's, not a worker's."""
        marker = f"GDR_HOME={self.homes[name]}".encode()
        run = self.homes[name] / "run"
        spared = {int((run / f"{part}.pid").read_text()) for part in ("server", "scheduler") if (run / f"{part}.pid").exists()}
        victims = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                group = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
                if marker + b"\0" in (proc / "environ").read_bytes() + b"\0" and group not in spared:
                    victims.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                continue
        victims = [pid for pid in victims if pid != os.getpid()]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for part in ("worker", "episodes"):
            (run / f"{part}.pid").unlink(missing_ok=True)
        return victims

    def dask_workers(self) -> set[str]:
        from distributed import Client

        with Client(self.scheduler, timeout=30) as client:
            return {w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values()}

    # --- the world: episodes, their audio and the fake providers' answers --------------------------------

    def catalogue(self, ids: list[str], seconds: int = 12) -> None:
        entries = []
        for episode_id in ids:
            make_audio(self.audio(episode_id), seconds, next(TONES))
            entries.append({"episode_id": episode_id, "file_name": f"{episode_id}.mp3", "speakers_map": {"0": "Ann"}})
            turns = [(0, f"Episode {episode_id} opens here."), *filler_turns(seconds, seed=episode_id)]
            self.api.add_audio(self.audio(episode_id), response=deepgram_response(turns, duration=seconds))
        self.settings.episodes_file.write_text(json.dumps(entries))

    def audio(self, episode_id: str) -> Path:
        return self.settings.audio_dir / f"{episode_id}.mp3"

    def listen_counts(self, ids: list[str]) -> dict[str, int]:
        by_sha = Counter(sha256_of(r.body) for r in self.api.requests_to(LISTEN))
        return {e: by_sha[sha256_of(self.audio(e))] for e in ids}

    def embedding_counts(self, ids: list[str]) -> dict[str, int]:
        bodies = [r.body for r in self.api.requests_to(EMBEDDINGS)]
        return {e: sum(f"Episode {e} opens here.".encode() in body for body in bodies) for e in ids}

    # --- what the database and the Prefect API say ---------------------------------------------------------

    def rows(self) -> dict[str, episode_store.EpisodeRow]:
        with Database.from_settings(self.settings) as db:
            return {r.episode_id: r for r in episode_store.list_episodes(db)}

    def statuses(self, ids: list[str]) -> dict[str, str]:
        rows = self.rows()
        return {e: rows[e].status if e in rows else "unknown" for e in ids}

    def attempts(self, run_id: str) -> list[Attempt]:
        with Database.from_settings(self.settings) as db:
            return attempts_of(db, run_id)

    def duplicate_segments(self) -> list[Any]:
        with Database.from_settings(self.settings) as db, db.connection() as conn:
            return conn.execute("SELECT episode_id, position FROM segments GROUP BY 1, 2 HAVING count(*) > 1").fetchall()

    def client(self) -> Any:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return get_client(sync_client=True)

    def start_run(self, **parameters: Any) -> str:
        """An `ingest/default` run as the schedule starts one; returns its id."""
        with self.client() as client:
            deployment = client.read_deployment_by_name("ingest/default")
            return str(client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id)

    def run_state(self, run_id: str) -> Any:
        with self.client() as client:
            return client.read_flow_run(run_id)

    def wait_for_run(self, run_id: str, timeout: float = 600) -> Any:
        """The run once it is final and stays final (a crashed run is resumed by the server's automation)."""
        def settled() -> Any:
            run = self.run_state(run_id)
            return run if run.state and run.state.is_final() and run.state.type.value != "CRASHED" else None

        return wait_until(settled, f"run {run_id} to end", timeout=timeout, every=1)

    def machine_of_run(self, run_id: str) -> str | None:
        """The machine whose process runs this flow run (found by the run id in a process's environment)."""
        marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                data = environ.read_bytes()
            except OSError:
                continue
            if marker in data:
                for name, home in self.homes.items():
                    if f"GDR_HOME={home}".encode() + b"\0" in data + b"\0":
                        return name
        return None


@contextmanager
def running_fleet(pg_server: str, tmp: Path) -> Iterator[Fleet]:
    """The two machines, started the way README says, and stopped at the end."""
    name = "fleet_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}_prefect"')
    url = pg_server.replace("/postgres?", f"/{name}?")
    migrate(url)
    socket_dir = pg_server.split("host=", 1)[1]
    homes = {SERVER: tmp / SERVER, SECOND: tmp / SECOND}
    with FakeAPI() as api:
        settings = Settings(_env_file=None, database_url=url, gdr_home=homes[SERVER], episodes_file=tmp / "episodes.json",
                            audio_dir=tmp / "audio", transcripts_dir=tmp / "transcripts")
        port, scheduler = free_port(), f"tcp://127.0.0.1:{free_port()}"
        server_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))},
            **app_environment(settings, api),
            "PREFECT_HOME": str(homes[SERVER] / "prefect"),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres:@/{name}_prefect?host={socket_dir}",
            "WORKER_NAME": SERVER, "MAX_PARALLEL_EPISODES": "2", "DEEPGRAM_MAX_CONCURRENCY": "3",
            "DASK_SCHEDULER_ADDRESS": scheduler,
        }
        fleet = Fleet(settings, api, f"http://127.0.0.1:{port}/api", scheduler, homes, server_env)
        started = fleet.gdr("server", "start", "--port", str(port), env=server_env)
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            fleet.start_machine(SECOND)
            wait_until(lambda: fleet.dask_workers() == {SERVER, SECOND}, "both machines' Dask workers to join")
            yield fleet
        finally:
            fleet.gdr("worker", "stop", env=fleet.machine_env(SECOND))
            fleet.gdr("server", "stop", env=server_env)
