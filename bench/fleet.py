"""Section 7: three engines for spreading a run's episodes over machines (issue 23, point 3).

The engines, each as small as it can be, all in this file:
  (A) `deployments`: one deployment run per episode (`run_deployment(..., timeout=0)`), taken by
      `prefect worker start --type process` workers (a new Python process per episode run);
  (B) `task_workers`: a Prefect background task, served by `prefect.task_worker.serve` in long-lived
      processes, submitted with `Task.delay()` and waited on;
  (C) `dask`: a flow mapping a task over prefect-dask's DaskTaskRunner(address=...), against a
      `dask scheduler` + `dask worker` processes started with the project's commands and settings
      (orchestration/cluster.py: worker-saturation 1.0, worker TTL 60 s, 3 allowed failures).

The world is I/O-bound and trivial on purpose: an episode's body is `time.sleep(S)` (standing in for a
transcription request) that writes a start and an end mark (time, worker name) to a folder, so what
is measured is the engine. Everything runs against `prefect server start` on the embedded Postgres
(a SQLite-backed server answers 503 under this concurrency), on a free port, started here.

Per round, A then B then C, each with fresh worker processes (every process started is killed by its
process tree at the end of its step):
  - overhead: one worker, K episodes one after the other (submit, wait for its end, next), S = 0.5 s.
    Wall = the episode's body start minus its submit. CPU = the CPU seconds, during the K episodes, of
    the submitting process (from its first submit; its imports excluded), the worker processes (with
    their children), the Prefect server, its Postgres and (C) the Dask scheduler, minus the server's
    and Postgres's idle CPU over the same time (measured at the round's start), per episode. The body
    sleeps, so all of it is orchestration.
  - throughput: N episodes of S seconds submitted at once, to one worker and to two, each with
    `slots` episodes at once. Wall = first submit to last body end.
  - kills (rounds given by --kill-rounds): two one-slot workers, a probe episode of 20 s, the worker
    holding it SIGKILLed with all its processes (a machine dying) at moment (1) taken but not started,
    (2) 1 s into the body, (3) 10 s into the body; then watched for WATCH seconds: did the body start
    on the other worker, how long after the death, how many times did it start and end. Moment (1):
    for A, the worker has started the episode's process (the run is Pending at it) and the body has
    not started; for B and C, the first worker alone is busy with a blocker episode and has been sent
    the probe (a task worker takes the next task run and waits for a slot; Dask's scheduler, at
    saturation 1.0, keeps it), then the second worker joins and the first is killed.

Both workers share this machine's 2 cores with whatever else runs: the load average is noted beside
every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from bench.harness import descendants, tree_cpu

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENGINES = ("deployments", "task_workers", "dask")
LABELS = {"deployments": "(A) per-episode deployment runs, process workers",
          "task_workers": "(B) Prefect task workers (`serve`, `.delay()`)",
          "dask": "(C) prefect-dask DaskTaskRunner on `dask.distributed`"}
POOL, DEPLOYMENT = "bench-fleet", "bench-episode/bench"
RESULT = "BENCH-RESULT "
# What issue 23 asks of the chosen engine.
TARGET_SPEEDUP, TARGET_WALL, TARGET_CPU = 1.8, 1.0, 0.5


def _sizes(quick: bool) -> dict[str, Any]:
    return {"overhead_episodes": 2 if quick else 4, "overhead_sleep": 0.5, "episodes": 4 if quick else 8,
            "sleep": 3.0 if quick else 5.0, "slots": 2, "probe": 20.0, "watch": 30.0 if quick else 40.0}


# --- the episode body, the same for every engine -----------------------------------------------------


def _mark(marks: str, episode: str, event: str) -> None:
    line = json.dumps({"episode": episode, "event": event, "t": time.time(),
                       "worker": os.environ.get("BENCH_WORKER", "?"), "pid": os.getpid()})
    with open(os.path.join(marks, f"{episode}.jsonl"), "a") as f:
        f.write(line + "\n")


def _body(episode: str, seconds: float, marks: str) -> None:
    _mark(marks, episode, "start")
    time.sleep(seconds)
    _mark(marks, episode, "end")


# (A) a flow, deployed to a process work pool
@flow(name="bench-episode", persist_result=False)
def episode_flow(episode: str, seconds: float, marks: str) -> None:
    _body(episode, seconds, marks)


# (B) a background task
@task(name="bench-episode-delayed", cache_policy=NO_CACHE)
def episode_delayed(episode: str, seconds: float, marks: str) -> None:
    _body(episode, seconds, marks)


# (C) a task mapped by a flow over the DaskTaskRunner
@task(name="bench-episode-dask", cache_policy=NO_CACHE, persist_result=False)
def episode_dask(episode: str, seconds: float, marks: str) -> None:
    _body(episode, seconds, marks)


@flow(name="bench-dask-map", persist_result=False)
def dask_map(episodes: list[list[Any]], marks: str, sequential: bool) -> dict[str, float]:
    from prefect.futures import wait

    submits: dict[str, float] = {}
    if sequential:
        for name, seconds in episodes:
            submits[name] = time.time()
            episode_dask.submit(name, seconds, marks).wait()
        return submits
    for name, _ in episodes:
        submits[name] = time.time()
    wait(episode_dask.map([e[0] for e in episodes], [e[1] for e in episodes], marks))
    return submits


# --- the submitting process (`python -m bench.fleet --client SPEC`) ------------------------------------


def _client(spec: dict[str, Any]) -> dict[str, Any]:
    engine, episodes, marks = spec["engine"], spec["episodes"], spec["marks"]
    sequential, deadline = spec["sequential"], time.monotonic() + spec["timeout"]
    cpu0 = time.process_time()
    submits: dict[str, float] = {}
    if engine == "deployments":
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        ids = []
        with get_client(sync_client=True) as client:

            def finished(run_id: Any) -> bool:
                while time.monotonic() < deadline:
                    state = client.read_flow_run(run_id).state
                    if state is not None and state.is_final():
                        return state.is_completed()
                    time.sleep(0.25)
                return False

            for name, seconds in episodes:
                submits[name] = time.time()
                run = run_deployment(DEPLOYMENT, parameters={"episode": name, "seconds": seconds, "marks": marks},
                                     timeout=0)
                ids.append(run.id)
                if sequential:
                    finished(run.id)
            ok = all(finished(i) for i in ids)
    elif engine == "task_workers":
        futures = []
        for name, seconds in episodes:
            submits[name] = time.time()
            futures.append(episode_delayed.delay(name, seconds, marks))
            if sequential:
                futures[-1].wait(timeout=max(1.0, deadline - time.monotonic()))
        for future in futures:
            future.wait(timeout=max(1.0, deadline - time.monotonic()))
        ok = all(f.state.is_completed() for f in futures)
    else:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=spec["address"])
        state = dask_map.with_options(task_runner=runner)(episodes, marks, sequential, return_state=True)
        submits = state.result() if state.is_completed() else {}
        ok = state.is_completed()
    return {"submits": submits, "cpu": time.process_time() - cpu0, "ok": ok}


def _serve(limit: int) -> None:
    from prefect.task_worker import serve

    serve(episode_delayed, limit=limit)


# --- processes ----------------------------------------------------------------------------------------


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """A machine dying: the process and every descendant at once (its process group too)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Proc:
    """A process started in a session of its own, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, ready: str | None = None):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        if ready:
            self.wait_for(ready)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, count: int = 1, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log_path.name} exited:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.log_path.name}: no {needle!r} within {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def kill(self) -> None:
        kill_tree(self.pid)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


class Bench:
    """One Prefect server (and, for C, one Dask scheduler) and the worker processes of one engine."""

    def __init__(self, pg: Any, server: Any, folder: Path):
        self.pg, self.server, self.folder = pg, server, folder
        self.scheduler: Proc | None = None
        self.address = ""
        self.idle_rate = 0.0

    def env(self, name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
        home = self.folder / "homes" / name
        home.mkdir(parents=True, exist_ok=True)
        env.update({"PREFECT_API_URL": self.server.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_HOME": str(home), "PREFECT_LOCAL_STORAGE_PATH": str(self.folder / "results"),
                    "PYTHONPATH": str(REPO_ROOT), "BENCH_WORKER": name, **(extra or {})})
        return env

    def log_path(self, name: str) -> Path:
        (self.folder / "logs").mkdir(exist_ok=True)
        return self.folder / "logs" / f"{name}-{uuid.uuid4().hex[:6]}.log"

    def measure_idle(self, seconds: float = 8.0) -> None:
        a = self.server.cpu() + self.pg.cpu()
        time.sleep(seconds)
        self.idle_rate = (self.server.cpu() + self.pg.cpu() - a) / seconds

    def start_scheduler(self) -> None:
        import socket

        from gent_disagreement_rag.orchestration import cluster

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        self.scheduler = Proc(cluster.scheduler_command(str(BIN / "dask"), self.address),
                              self.env("scheduler", cluster.scheduler_environment()), self.log_path("scheduler"),
                              ready="Scheduler at")

    def stop_scheduler(self) -> None:
        if self.scheduler:
            self.scheduler.kill()
            self.scheduler = None

    def worker(self, engine: str, name: str, slots: int) -> Proc:
        if engine == "deployments":
            # PREFECT_WORKER_QUERY_SECONDS as `gdr worker start` sets it (Prefect's default is 10 s).
            args = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--limit",
                    str(slots), "--name", name]
            return Proc(args, self.env(name, {"PREFECT_WORKER_QUERY_SECONDS": "5"}), self.log_path(name),
                        ready="started")
        if engine == "task_workers":
            proc = Proc([sys.executable, "-m", "bench.fleet", "--serve", str(slots)], self.env(name),
                        self.log_path(name), ready="Subscribing to runs")
            time.sleep(1.0)  # the subscription's websocket opens just after that line
            return proc
        from gent_disagreement_rag.orchestration import cluster

        return Proc(cluster.worker_command(str(BIN / "dask"), self.address, name, slots), self.env(name),
                    self.log_path(name), ready="Registered to")

    def client(self, engine: str, episodes: list[list[Any]], marks: Path, *, sequential: bool,
               timeout: float) -> subprocess.Popen:
        spec = {"engine": engine, "episodes": episodes, "marks": str(marks), "sequential": sequential,
                "timeout": timeout, "address": self.address}
        return subprocess.Popen([sys.executable, "-m", "bench.fleet", "--client", json.dumps(spec)],
                                env=self.env("client"), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def cpu(self, workers: list[Proc]) -> dict[str, float]:
        return {"workers": sum(w.cpu() for w in workers), "server": self.server.cpu(), "postgres": self.pg.cpu(),
                "scheduler": self.scheduler.cpu() if self.scheduler else 0.0}


def _client_result(proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    if not lines:
        raise RuntimeError(f"client failed:\n{out[-2000:]}\n{err[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def read_marks(marks: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in marks.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out.setdefault(row["episode"], []).append(row)
    return out


def _fresh_marks(bench: Bench, tag: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"marks-{tag}-", dir=bench.folder))
    path.chmod(0o777)
    return path


# --- the measurements ---------------------------------------------------------------------------------


def batch(bench: Bench, engine: str, workers: list[Proc], episodes: list[list[Any]], *, sequential: bool) -> dict[str, Any]:
    """Submit `episodes` from a client process, wait for them; latency, wall and CPU from the marks."""
    from bench.harness import load

    marks = _fresh_marks(bench, engine)
    load_before = load()
    cpu0, t0 = bench.cpu(workers), time.monotonic()
    result = _client_result(bench.client(engine, episodes, marks, sequential=sequential, timeout=600), 660)
    elapsed = time.monotonic() - t0
    cpu1 = bench.cpu(workers)
    seen = read_marks(marks)
    starts = {e: min(r["t"] for r in rows if r["event"] == "start") for e, rows in seen.items()}
    ends = {e: max(r["t"] for r in rows if r["event"] == "end") for e, rows in seen.items() if
            any(r["event"] == "end" for r in rows)}
    submits = result["submits"]
    waits = [starts[e] - submits[e] for e in submits if e in starts]
    deltas = {k: cpu1[k] - cpu0[k] for k in cpu0}
    idle = bench.idle_rate * elapsed
    cpu_total = result["cpu"] + sum(deltas.values()) - idle
    body = sum(s for _, s in episodes)
    return {"episodes": len(episodes), "ok": result["ok"] and len(ends) == len(episodes),
            "wait_median": round(statistics.median(waits), 3) if waits else None,
            "wait_max": round(max(waits), 3) if waits else None,
            "wall": round(max(ends.values()) - min(submits.values()), 2) if ends and submits else None,
            "ideal": round(body, 2), "cpu_total": round(cpu_total, 2),
            "cpu_per_episode": round(cpu_total / len(episodes), 3),
            "cpu_parts": {"client": round(result["cpu"], 2), **{k: round(v, 2) for k, v in deltas.items()},
                          "idle_subtracted": round(idle, 2)},
            "by_worker": _by_worker(seen), "load": load_before, "load_after": load()}


def _by_worker(seen: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rows in seen.values():
        for r in rows:
            if r["event"] == "start":
                out[r["worker"]] = out.get(r["worker"], 0) + 1
    return out


def measure_engine(bench: Bench, engine: str, sizes: dict[str, Any], round_no: int) -> dict[str, Any]:
    from bench.harness import log

    slots = sizes["slots"]
    workers = [bench.worker(engine, "w1", slots)]
    try:
        # A long-lived worker imports Prefect's task engine and opens its API client with its first episode:
        # a once-per-process cost, not a per-episode one, so one episode first, unmeasured.
        batch(bench, engine, workers, [["warm", 0.0]], sequential=True)
        over = batch(bench, engine, workers, [[f"o{i}", sizes["overhead_sleep"]] for i in range(sizes["overhead_episodes"])],
                     sequential=True)
        log(f"  fleet round {round_no} {engine}: overhead wait {over['wait_median']} s, CPU {over['cpu_per_episode']} "
            f"s/episode")
        eps = [[f"t{i}", sizes["sleep"]] for i in range(sizes["episodes"])]
        one = batch(bench, engine, workers, eps, sequential=False)
        one["ideal"] = round(sizes["episodes"] * sizes["sleep"] / slots, 2)
        workers.append(bench.worker(engine, "w2", slots))
        two = batch(bench, engine, workers, eps, sequential=False)
        two["ideal"] = round(sizes["episodes"] * sizes["sleep"] / (2 * slots), 2)
        log(f"  fleet round {round_no} {engine}: 1 worker {one['wall']} s, 2 workers {two['wall']} s "
            f"({two['by_worker']})")
        return {"round": round_no, "engine": engine, "overhead": over, "one": one, "two": two}
    finally:
        for w in workers:
            w.kill()


def _starts(marks: Path, episode: str) -> list[dict[str, Any]]:
    return [r for r in read_marks(marks).get(episode, []) if r["event"] == "start"]


def _wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def kill_run(bench: Bench, engine: str, moment: int, sizes: dict[str, Any], round_no: int) -> dict[str, Any]:
    """Kill the worker holding a probe episode at `moment` (1 taken, 2 just started, 3 mid-body); watch."""
    from bench.harness import load, log

    marks = _fresh_marks(bench, f"kill{moment}")
    probe, workers, client = "probe", [], None
    note = ""
    load_before = load()
    try:
        if moment == 1 and engine != "deployments":
            workers.append(bench.worker(engine, "w1", 1))
            client = bench.client(engine, [["blocker", 60.0], [probe, sizes["probe"]]], marks, sequential=False,
                                  timeout=300)
            if not _wait_until(lambda: _starts(marks, "blocker") or _starts(marks, probe), 120):
                raise RuntimeError("nothing started on w1")
            if _starts(marks, probe):  # the probe went first: it plays the blocker's part
                probe = "blocker"
            time.sleep(3.0)  # the task worker is sent the next run while busy (or Dask's scheduler keeps it)
            held = _holds_two(bench, engine, workers[0])
            note = "w1 held the probe, waiting behind the blocker" if held else "w1 did not hold the probe"
            # The survivor has room for both of the dead worker's episodes, so the probe does not wait behind
            # the blocker's rerun there.
            workers.append(bench.worker(engine, "w2", 2))
            victim = workers[0]
            if _starts(marks, probe):
                note += f"; the probe started on {_starts(marks, probe)[0]['worker']} before the kill"
        else:
            workers += [bench.worker(engine, "w1", 1), bench.worker(engine, "w2", 1)]
            client = bench.client(engine, [[probe, sizes["probe"]]], marks, sequential=False, timeout=300)
            if moment == 1:
                # A process worker has started the episode's process: the run is Pending at it, no body yet.
                base = {w.pid: len(descendants(w.pid)) for w in workers}
                taken: list[Proc] = []
                _wait_until(lambda: bool(taken.extend(w for w in workers if len(descendants(w.pid)) > base[w.pid])
                                         or taken), 120, 0.05)
                if not taken:
                    raise RuntimeError("no worker took the probe")
                victim = taken[0]
                note = "body started before the kill" if _starts(marks, probe) else "its process started, body not yet"
            else:
                if not _wait_until(lambda: bool(_starts(marks, probe)), 120):
                    raise RuntimeError("the probe never started")
                first = _starts(marks, probe)[0]
                victim = next(w for w in workers if w.log_path.name.startswith(first["worker"] + "-"))
                delay = 1.0 if moment == 2 else sizes["probe"] / 2
                time.sleep(max(0.0, first["t"] + delay - time.time()))
        before_kill = {r["pid"] for r in _starts(marks, probe)}
        killed_at = time.time()
        victim_name = victim.log_path.name.split("-")[0]
        victim.kill()
        survivors = [w for w in workers if w is not victim]
        elsewhere = lambda: [r for r in _starts(marks, probe) if r["t"] > killed_at and r["pid"] not in before_kill]
        restarted = _wait_until(lambda: bool(elsewhere()), sizes["watch"])
        if restarted:
            _wait_until(lambda: any(r["event"] == "end" for r in read_marks(marks).get(probe, [])),
                        sizes["probe"] + 30)
        rows = read_marks(marks).get(probe, [])
        starts = [r for r in rows if r["event"] == "start"]
        ends = [r for r in rows if r["event"] == "end"]
        out = {"round": round_no, "engine": engine, "moment": moment, "victim": victim_name,
               "started_before_kill": len(before_kill), "rerun_elsewhere": restarted,
               "recovery_s": round(elsewhere()[0]["t"] - killed_at, 2) if restarted else None,
               "starts": len(starts), "ends": len(ends), "ran_on": [r["worker"] for r in starts],
               "watched_s": sizes["watch"], "note": note, "load": load_before, "survivors": len(survivors)}
        log(f"  fleet round {round_no} {engine} kill at moment {moment}: rerun elsewhere {restarted} "
            f"({out['recovery_s']} s), starts {len(starts)}, ends {len(ends)}; {note}")
        return out
    finally:
        if client is not None:
            kill_tree(client.pid)
            client.communicate()
        for w in workers:
            w.kill()


def _holds_two(bench: Bench, engine: str, worker: Proc) -> bool:
    """Whether `worker` has been given both the blocker and the probe."""
    if engine == "task_workers":
        return worker.text().count("Received task run") >= 2
    from distributed import Client

    with Client(bench.address, timeout=30) as client:
        names = {addr: info.get("name") for addr, info in client.scheduler_info()["workers"].items()}
        return any(names.get(addr) == "w1" and len(keys) >= 2 for addr, keys in client.processing().items())


def _setup_deployment(server: Any) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    env = {**os.environ, "PREFECT_API_URL": server.api_url}
    subprocess.run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env=env, cwd=REPO_ROOT,
                   check=True, capture_output=True)
    with temporary_settings({PREFECT_API_URL: server.api_url}), get_client(sync_client=True) as client:
        flow_id = client.create_flow(episode_flow)
        client.create_deployment(
            flow_id, "bench", work_pool_name=POOL, entrypoint="bench/fleet.py:episode_flow", path=str(REPO_ROOT),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}])


def run(pg: Any, folder: Path, *, quick: bool = False, rounds: int = 3, kill_rounds: int = 3,
        engines: tuple[str, ...] = ENGINES) -> dict[str, Any]:
    from bench.harness import load, log, prefect_server

    sizes = _sizes(quick)
    rounds = 1 if quick else rounds
    out: dict[str, Any] = {"sizes": sizes, "rounds": rounds, "kill_rounds": min(kill_rounds, rounds),
                           "measures": [], "kills": [], "idle": []}
    with prefect_server(pg, "process") as server:
        _setup_deployment(server)
        bench = Bench(pg, server, folder)
        for i in range(1, rounds + 1):
            bench.measure_idle()
            out["idle"].append({"round": i, "server_postgres_cpu_per_s": round(bench.idle_rate, 3), "load": load()})
            for engine in engines:
                try:
                    if engine == "dask":
                        bench.start_scheduler()
                    out["measures"].append(measure_engine(bench, engine, sizes, i))
                    if i <= kill_rounds:
                        for moment in (1, 2, 3):
                            out["kills"].append(kill_run(bench, engine, moment, sizes, i))
                finally:
                    bench.stop_scheduler()
            log(f"  fleet round {i} done")
            if partial := os.environ.get("BENCH_FLEET_PARTIAL"):  # what a run cut short still has
                Path(partial).write_text(json.dumps(out, indent=1, default=str))
    out["summary"] = summarise(out)
    return out


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    med = lambda xs: round(statistics.median(xs), 3) if xs else None
    summary: dict[str, Any] = {}
    for engine in ENGINES:
        rows = [m for m in out["measures"] if m["engine"] == engine]
        if not rows:
            continue
        one = med([r["one"]["wall"] for r in rows if r["one"]["wall"]])
        two = med([r["two"]["wall"] for r in rows if r["two"]["wall"]])
        summary[engine] = {
            "wait": med([r["overhead"]["wait_median"] for r in rows if r["overhead"]["wait_median"] is not None]),
            "cpu": med([r["overhead"]["cpu_per_episode"] for r in rows]),
            "load": med([r["overhead"]["load"] for r in rows]),
            "wall_one": one, "wall_two": two, "speedup": round(one / two, 2) if one and two else None,
            "load_throughput": med([r["one"]["load"] for r in rows] + [r["two"]["load"] for r in rows]),
        }
    return summary


# --- the Markdown ------------------------------------------------------------------------------------


JOIN = {
    "deployments": "a checkout of the project at the deployment's path (the pull step) and its venv, PREFECT_API_URL, "
                   "`prefect worker start --pool P` (one process; one new Python process per episode)",
    "task_workers": "a checkout and venv, PREFECT_API_URL, a long-lived `serve` process for the episode task (the "
                    "task's key is its module and source: every machine must run the same code)",
    "dask": "a checkout and venv, a route to the scheduler's port (8786) and to the Prefect API, `dask worker "
            "tcp://scheduler:8786` (the task arrives pickled: the same code and package versions everywhere)",
}
MOMENT = {1: "(1) taken, not started", 2: "(2) 1 s into the body", 3: "(3) mid-body (10 s of 20)"}


def _kill_cell(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "—"
    parts = []
    for r in rows:
        if r["rerun_elsewhere"]:
            s = f"reran on the survivor after **{r['recovery_s']:.1f} s**"
        else:
            s = f"**not rerun** in {r['watched_s']:.0f} s watched"
        s += f"; body started {r['starts']}x, ended {r['ends']}x"
        if r["note"]:
            s += f" ({r['note']})"
        parts.append(f"{s} [load {r['load']}]")
    return "<br>".join(parts)


def markdown(fleet: dict[str, Any]) -> str:
    s, z = fleet["summary"], fleet["sizes"]
    lines = [
        "Written by `bench/fleet.py` (`uv run python -m bench.run_all --only fleet`, or alone: `uv run python -m "
        "bench.fleet --standalone`); method in its docstring. "
        "Each engine as small as it can be (a body that sleeps and marks its start and end), against `prefect server "
        "start` on the embedded Postgres; all workers on this machine's 2 cores, shared with other work (the load "
        f"average beside each figure). {fleet['rounds']} round(s), engines alternating A B C in each; medians in bold, "
        "then each round's figure. "
        f"Overhead: one worker, {z['overhead_episodes']} episodes of {z['overhead_sleep']} s one after the other; "
        f"throughput: {z['episodes']} episodes of {z['sleep']} s at once, {z['slots']} slots per worker; issue 23's "
        f"targets: two workers >= {TARGET_SPEEDUP}x one, <= {TARGET_WALL} s wall and <= {TARGET_CPU} s CPU of overhead "
        "per episode. Process workers poll every 5 s, as `gdr worker start` sets them; every worker ran one episode "
        "before the overhead runs (a long-lived worker's imports are paid once, not per episode); the second "
        "worker of the two-worker runs had not.", "",
        "| engine | overhead: submit -> body start, s / episode | overhead: CPU s / episode | 1 worker: wall s | "
        "2 workers: wall s | 2 vs 1 | load (overhead; throughput) |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
    for engine in ENGINES:
        if engine not in s:
            continue
        e = s[engine]
        rows = [m for m in fleet["measures"] if m["engine"] == engine]
        waits = ", ".join(f"{r['overhead']['wait_median']}" for r in rows)
        cpus = ", ".join(f"{r['overhead']['cpu_per_episode']}" for r in rows)
        ones = ", ".join(f"{r['one']['wall']}" for r in rows)
        twos = ", ".join(f"{r['two']['wall']}" for r in rows)
        loads_o = ", ".join(f"{r['overhead']['load']}" for r in rows)
        loads_t = ", ".join(f"{r['one']['load']}/{r['two']['load']}" for r in rows)
        lines.append(f"| {LABELS[engine]} | **{e['wait']}** ({waits}) | **{e['cpu']}** ({cpus}) | **{e['wall_one']}** "
                     f"({ones}) | **{e['wall_two']}** ({twos}) | **{e['speedup']}x** | {loads_o}; {loads_t} |")
    ideal_one = z["episodes"] * z["sleep"] / z["slots"]
    lines += ["", f"Ideal walls: {ideal_one:.0f} s with one worker, {ideal_one / 2:.0f} s with two. CPU counts the "
              "submitting process from its first submit, the workers' process trees, the Prefect server, its Postgres "
              "and the Dask scheduler, minus the server's and Postgres's idle CPU (per round: "
              + ", ".join(f"{r['server_postgres_cpu_per_s']} s/s at load {r['load']}" for r in fleet["idle"]) + ").", ""]
    per = {}
    for engine in ENGINES:
        for r in fleet["measures"]:
            if r["engine"] == engine:
                per.setdefault(engine, []).append(r["overhead"]["cpu_parts"])
    lines += ["CPU of the overhead runs by process, all episodes of a round (client / workers / server / Postgres / "
              "scheduler / idle subtracted):", ""]
    for engine, parts in per.items():
        lines.append(f"- {LABELS[engine]}: " + "; ".join(
            f"{p['client']} / {p['workers']} / {p['server']} / {p['postgres']} / {p['scheduler']} / -{p['idle_subtracted']}"
            for p in parts))
    lines += ["", f"**A worker SIGKILLed with all its processes** (a machine dying) while holding a probe episode of "
              f"{z['probe']:.0f} s, the other worker alive; {fleet['kill_rounds']} round(s). 'started Nx' counts the "
              "body's starts: 2 = it ran again from the beginning elsewhere.", "",
              "| engine | " + " | ".join(MOMENT.values()) + " | a second machine needs |",
              "| --- | --- | --- | --- | --- |"]
    for engine in ENGINES:
        kills = [k for k in fleet["kills"] if k["engine"] == engine]
        if engine not in s:
            continue
        cells = [_kill_cell([k for k in kills if k["moment"] == m]) for m in (1, 2, 3)]
        lines.append(f"| {LABELS[engine]} | " + " | ".join(cells) + f" | {JOIN[engine]} |")
    return "\n".join(lines)


def figures(fleet: dict[str, Any]) -> dict[str, Any]:
    """The template's values for section 7 (bench/report.py)."""
    values: dict[str, Any] = {"fleet_tables": markdown(fleet), "fl_rounds": fleet["rounds"],
                              "fl_watch": f"{fleet['sizes']['watch']:.0f}",
                              "fl_overhead_episodes": fleet["sizes"]["overhead_episodes"]}
    for engine, e in fleet["summary"].items():
        short = {"deployments": "a", "task_workers": "b", "dask": "c"}[engine]
        for key in ("wait", "cpu", "wall_one", "wall_two", "speedup", "load", "load_throughput"):
            values[f"fl_{short}_{key}"] = e[key]
        for key, target, better in (("wait", TARGET_WALL, "le"), ("cpu", TARGET_CPU, "le"), ("speedup", TARGET_SPEEDUP, "ge")):
            met = e[key] is not None and (e[key] <= target if better == "le" else e[key] >= target)
            values[f"fl_{short}_{key}_mark"] = "met" if met else "**missed**"
        parts = [m["overhead"]["cpu_parts"] for m in fleet["measures"] if m["engine"] == engine]
        n = fleet["sizes"]["overhead_episodes"]
        for part in ("client", "workers", "server", "scheduler"):
            values[f"fl_{short}_cpu_{part}"] = f"{statistics.median(p[part] for p in parts) / n:.2f}"
        for moment in (1, 2, 3):
            rows = [k for k in fleet["kills"] if k["engine"] == engine and k["moment"] == moment]
            times = [k["recovery_s"] for k in rows if k["recovery_s"] is not None]
            values[f"fl_{short}_kill{moment}"] = (f"{statistics.median(times):.1f} s" if len(times) == len(rows) and rows
                                                  else f"not rerun in {rows[0]['watched_s']:.0f} s" if rows else "—")
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client")
    parser.add_argument("--serve", type=int)
    parser.add_argument("--standalone", action="store_true", help="run the section alone, update results.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kill-rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--from-partial", help="record the rounds a cut-short run saved (BENCH_FLEET_PARTIAL)")
    args = parser.parse_args()
    # Imported by name, not run as __main__: a task's key (and Dask's pickle of it) must be the same in the
    # workers and the client.
    from bench import fleet

    if args.serve is not None:
        fleet._serve(args.serve)
    elif args.client:
        print(RESULT + json.dumps(fleet._client(json.loads(args.client))), flush=True)
    elif args.standalone:
        fleet._standalone(args)
    elif args.from_partial:
        fleet._record(json.loads(Path(args.from_partial).read_text()), minutes=None)


def _standalone(args: Any) -> None:
    from bench.harness import embedded_postgres, log
    from bench.run_all import bytecode_cache

    with tempfile.TemporaryDirectory(prefix="gdr-bench-fleet-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o777)
        log("fleet: warming a bytecode cache")
        bytecode_cache(folder)
        t0 = time.perf_counter()
        with embedded_postgres() as pg:
            result = run(pg, folder, quick=args.quick, rounds=args.rounds, kill_rounds=args.kill_rounds,
                         engines=tuple(args.engines.split(",")))
    _record(result, minutes=round((time.perf_counter() - t0) / 60, 1), quick=args.quick)
    log(f"fleet: done in {result['_meta']['minutes']} min")


def _record(result: dict[str, Any], *, minutes: float | None, quick: bool = False) -> None:
    """The section's figures into bench/results.json, and BENCHMARKS.md rewritten from it."""
    from bench.harness import load
    from bench.report import write_report
    from bench.run_all import CHART, REPORT, RESULTS

    rounds = sorted({m["round"] for m in result["measures"]})
    result["rounds"] = len(rounds)
    result["kill_rounds"] = len({k["round"] for k in result["kills"]})
    result["summary"] = summarise(result)
    result["_meta"] = {"minutes": minutes, "load_after": load(), "when": time.strftime("%Y-%m-%d %H:%M"), "quick": quick}
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"sections": {}}
    results["sections"]["fleet"] = result
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_report(results, REPORT, CHART)


if __name__ == "__main__":
    main()
