"""`gdr server start|stop|status`: a local Prefect server on the project's Postgres, the `default`
process work pool, the `ingest/default` deployment, the fleet's shared configuration, the fleet's Dask
scheduler, and this machine's workers — all on 127.0.0.1. `gdr worker start|stop` runs one machine's
workers, on this machine or another that has only PREFECT_API_URL: a Prefect worker for the `ingest` runs
themselves and a Dask worker for their episodes (cluster.py).

Processes are started detached, with their pids and logs under GDR_HOME, so they outlive the
command that started them and `gdr server stop` / `gdr worker stop` can end them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..errors import GdrError
from ..settings import Settings
from ..storage.embedded import ensure_prefect_database
from . import cluster
from .environment import prefect_environment
from .recovery import HEARTBEAT_SECONDS, ensure_recovery_automations

WORK_POOL = "default"
INGEST_DEPLOYMENT = "ingest/default"



@dataclass(frozen=True, slots=True)
class ServerInfo:
    api_url: str
    ui_url: str
    pids: dict[str, int]
    logs: Path


def _prefect() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def _dask() -> str:
    return str(Path(sys.executable).with_name("dask"))


def _run_dir(settings: Settings) -> Path:
    path = settings.home / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _logs_dir(settings: Settings) -> Path:
    path = settings.home / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _read_pids(settings: Settings) -> dict[str, int]:
    pids = {}
    for file in _run_dir(settings).glob("*.pid"):
        pid = int(file.read_text().strip() or 0)
        if pid and _alive(pid):
            pids[file.stem] = pid
        else:
            file.unlink(missing_ok=True)
    return pids


def _spawn(settings: Settings, name: str, args: list[str], env: dict[str, str], cwd: Path) -> int:
    log = (_logs_dir(settings) / f"{name}.log").open("ab")
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    (_run_dir(settings) / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _check(args: list[str], env: dict[str, str], cwd: Path, what: str) -> None:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise GdrError(f"{what} failed (exit {done.returncode}):\n{tail}")


def start(settings: Settings, project_dir: Path, *, port: int = 4200, worker_poll_seconds: int = 5,
          timeout: float = 90.0) -> ServerInfo:
    """Start whatever is not already running; idempotent."""
    project_dir = project_dir.resolve()
    url = api_url(port)
    # The UI asks /ui-settings where its API is: without PREFECT_UI_API_URL it answers port 4200 whatever `--port` is.
    # The user's own PREFECT_* variables win over the derived ones (as for in-process runs).
    env = {**prefect_environment(settings, ensure_prefect_database(settings)), **os.environ, "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
           "PREFECT_UI_API_URL": url, "PREFECT_SERVER_API_PORT": str(port)}
    env.pop("PREFECT_API_URL", None)
    pids = _read_pids(settings)
    if "server" not in pids and not _healthy(url):
        pids["server"] = _spawn(settings, "server", [_prefect(), "server", "start", "--host", "127.0.0.1",
                                                     "--port", str(port), "--analytics-off"], env, project_dir)
    deadline = time.monotonic() + timeout
    while not _healthy(url):
        if "server" in pids and not _alive(pids["server"]):
            raise GdrError(f"the Prefect server exited; see {_logs_dir(settings) / 'server.log'}")
        if time.monotonic() > deadline:
            raise GdrError(f"the Prefect server did not answer on {url} within {timeout:.0f} s; "
                           f"see {_logs_dir(settings) / 'server.log'}")
        time.sleep(0.5)
    client_env = {**env, "PREFECT_API_URL": url}
    pools = subprocess.run([_prefect(), "work-pool", "inspect", WORK_POOL], env=client_env, cwd=project_dir,
                           capture_output=True, text=True)
    if pools.returncode != 0:
        _check([_prefect(), "work-pool", "create", WORK_POOL, "--type", "process"], client_env, project_dir,
               "creating the work pool")
    address = cluster.scheduler_address(settings)
    settings = settings.model_copy(update={"dask_scheduler_address": address})
    if "scheduler" not in pids and not cluster.scheduler_reachable(address):
        pids["scheduler"] = _spawn(settings, "scheduler", cluster.scheduler_command(_dask(), address),
                                   {**client_env, **cluster.scheduler_environment()}, project_dir)
    deploy(settings, client_env, project_dir)
    publish_fleet(settings, url)
    pids |= _spawn_workers(settings, pids, client_env, project_dir, worker_poll_seconds)
    return ServerInfo(api_url=url, ui_url=f"http://127.0.0.1:{port}", pids=pids, logs=_logs_dir(settings))


def deploy(settings: Settings, env: dict[str, str], project_dir: Path) -> None:
    """`prefect deploy --all` with the checkout's git version, keeping a schedule the user paused paused
    (deploying applies prefect.yaml's schedules as active), then the notifications' automations."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from . import notifications

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        try:
            before = client.read_deployment_by_name(INGEST_DEPLOYMENT)
            paused = before.paused
            inactive = {s.schedule.cron for s in before.schedules if not s.active and hasattr(s.schedule, "cron")}
        except ObjectNotFound:
            paused, inactive = False, set()
        _check([_prefect(), "--no-prompt", "deploy", "--all"], {**env, "GDR_VERSION": git_version(project_dir)},
               project_dir, "prefect deploy")
        after = client.read_deployment_by_name(INGEST_DEPLOYMENT)
        if paused:
            client.pause_deployment(after.id)
        for schedule in after.schedules:
            if getattr(schedule.schedule, "cron", None) in inactive:
                client.update_deployment_schedule(after.id, schedule.id, active=False)
        if settings.notify_url is not None:
            notifications.save_notify_block(settings.notify_url)
        notifications.ensure_automations(str(after.id))
        ensure_recovery_automations(str(after.id))


def git_version(project_dir: Path) -> str:
    """The checkout's commit (`git describe --always --dirty`), or "unknown" outside a git checkout."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=project_dir, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def publish_fleet(settings: Settings, api_url: str) -> list[str]:
    """The fleet's configuration (see fleet.py), on the server at `api_url`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from .fleet import publish

    with temporary_settings({PREFECT_API_URL: api_url}):
        return publish(settings)


def _spawn_workers(settings: Settings, pids: dict[str, int], env: dict[str, str], cwd: Path,
                   poll_seconds: int) -> dict[str, int]:
    """This machine's two workers, those not running yet: a Prefect worker taking `ingest` runs (one at a
    time: the run itself only waits for its episodes) and a Dask worker taking episodes, MAX_PARALLEL_EPISODES
    at once. Neither takes a slot of the other, so a one-slot machine cannot wait on itself."""
    name = settings.worker_name or f"{socket.gethostname()}-worker"
    worker_env = {**env, "WORKER_NAME": name, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
    started = {}
    if "worker" not in pids:
        started["worker"] = _spawn(settings, "worker", [
            _prefect(), "worker", "start", "--pool", WORK_POOL, "--name", name, "--limit", "1"],
            {**worker_env, "PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds)}, cwd)
    if "episodes" not in pids and settings.dask_scheduler_address:
        started["episodes"] = _spawn(settings, "episodes", cluster.worker_command(
            _dask(), settings.dask_scheduler_address, name, settings.max_parallel_episodes), worker_env, cwd)
    return started


def start_worker(settings: Settings, project_dir: Path, api_url: str, *, poll_seconds: int = 5) -> dict[str, int]:
    """This machine's workers (see `_spawn_workers`); idempotent. Everything else they need (database, keys,
    settings, the Dask scheduler's address) comes from the server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from .fleet import fleet_settings

    pids = _read_pids(settings)
    if not _healthy(api_url):
        raise GdrError(f"no Prefect server answers at {api_url} (set PREFECT_API_URL)")
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with temporary_settings({PREFECT_API_URL: api_url}):
        shared = fleet_settings()
    pids |= _spawn_workers(shared, pids, env, project_dir.resolve(), poll_seconds)
    return pids


WORKERS = frozenset({"worker", "episodes"})


def stop(settings: Settings, timeout: float = 20.0, *, only: frozenset[str] | None = None) -> list[str]:
    """Stop the worker, then the server (their whole process groups), or `only` one of them; returns what
    was stopped."""
    stopped = []
    pids = _read_pids(settings)
    # Workers first (the Prefect one, then the Dask one), then the scheduler and the server.
    order = ("worker", "episodes", "scheduler", "server")
    for name in sorted(pids, key=lambda n: order.index(n) if n in order else len(order)):
        if only is not None and name not in only:
            continue
        pid = pids[name]
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
        stopped.append(name)
    return stopped


def status(settings: Settings) -> dict[str, int]:
    return _read_pids(settings)
