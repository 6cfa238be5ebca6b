"""Section 6: one deployment run over several workers, and what each way of fanning episodes out costs.

(i) Throughput: 16 episodes of section 1's I/O-bound world (fake Deepgram 2 s + audio/200, OpenAI 0.3 s) in
one `ingest/default` run on a `prefect server start` server, taken by ONE or TWO process workers started
with `gdr worker start` (separate GDR_HOMEs, only PREFECT_API_URL; the first has one slot more, as the worker
`gdr server start` starts, for the `ingest` run itself), in alternating rounds. Each run gets a fresh
database and stage cache, published with `gdr server publish`. Wall = the `ingest` run's start to end.

(ii) Overhead per episode at zero latency, one episode at a time, against the same library calls without
Prefect ("bare"), in alternating rounds: threads (the `ingest` flow in one process), deployment runs (the
`ingest/default` run on one worker, one `episode_pipeline/default` run per episode) and Prefect task workers
(`episode_on_task_worker` below, served by `prefect.task_worker.serve`, `.delay()`ed per episode). CPU: the
client process and the worker's process tree (the flow-run processes it started included).

Both worker halves share this machine's 2 cores: what is measured is the orchestration, not two machines.
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
from pathlib import Path
from typing import Any

from prefect import task

from bench.harness import REPO_ROOT, Postgres, PrefectServer, RemoteFakeAPI, load, log, prefect_server, tree_cpu
from bench.parallel import DEEPGRAM_LATENCY, OPENAI_LATENCY, child_env, episode_latencies, run_child

BIN = Path(sys.executable).parent
PER_WORKER = 4
ROUNDS = 3
FRAGMENT = REPO_ROOT / "bench" / "fleet.md"
PREVIOUS_OVERHEAD = {"wall": 0.28, "cpu": 0.12}  # BENCHMARKS.md section 1, the design before the fleet work


# --- the task-worker prototype (what `.delay()` fan-out would be) -----------------------------------------


_context = None


def _task_worker_context():
    """One RunContext per task-worker process, opened by its first episode."""
    global _context
    if _context is None:
        from gent_disagreement_rag.ingest.context import RunContext
        from gent_disagreement_rag.settings import Settings

        _context = RunContext.open(Settings())
    return _context


@task(name="episode-on-task-worker", persist_result=True)
def episode_on_task_worker(job: Any, run_id: str) -> int:
    from gent_disagreement_rag.ingest.sequence import process_episode
    from gent_disagreement_rag.orchestration.tasks import PrefectStages

    ctx = _task_worker_context()
    return process_episode(ctx, job, run_id, PrefectStages(ctx, job.episode_id)).segments


def _serve_tasks() -> None:
    from prefect.task_worker import serve

    serve(episode_on_task_worker, limit=1)


def _delay_all() -> dict[str, Any]:
    """Client: `.delay()` every planned episode, then read the results back."""
    from gent_disagreement_rag.ingest.context import RunContext
    from gent_disagreement_rag.ingest.plan import plan_episodes
    from gent_disagreement_rag.ingest.stages import register_catalogue
    from gent_disagreement_rag.settings import Settings

    cpu0, started = time.process_time(), time.perf_counter()
    with RunContext.open(Settings()) as ctx:
        register_catalogue(ctx)
        jobs = plan_episodes(ctx.settings, ctx.db, None, False).jobs
    futures = [episode_on_task_worker.delay(job, "bench") for job in jobs]
    segments = [future.result() for future in futures]
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu0, "ok": all(segments),
            "episodes": len(segments)}


# --- a fleet of process workers ---------------------------------------------------------------------------


def _worker_env(api_url: str, home: Path, name: str, limit: int) -> dict[str, str]:
    """A machine that knows only where the Prefect server is (and its bytecode cache, as a used machine has)."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PREFECT_API_URL": api_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GDR_HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
           "WORKER_NAME": name, "MAX_PARALLEL_EPISODES": str(limit)}
    if prefix := os.environ.get("PYTHONPYCACHEPREFIX"):
        env["PYTHONPYCACHEPREFIX"] = prefix
    return env


def _gdr(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "gdr"), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"gdr {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


class Workers:
    """`gdr worker start` processes, stopped with `gdr worker stop`."""

    def __init__(self, api_url: str, folder: Path, count: int):
        # The first worker also holds the `ingest` run: one slot more, as `gdr server start`'s worker has.
        self.envs = [_worker_env(api_url, folder / f"worker-{i}", f"w{i + 1}", PER_WORKER + (i == 0))
                     for i in range(count)]
        for env in self.envs:
            _gdr("worker", "start", env=env)
        self.pids = [int((Path(env["GDR_HOME"]) / "run" / "worker.pid").read_text()) for env in self.envs]

    def cpu(self) -> float:
        return sum(tree_cpu(pid) for pid in self.pids)

    def stop(self) -> None:
        for env in self.envs:
            _gdr("worker", "stop", env=env)


def _client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return get_client(sync_client=True)


def _deployment_run(api_url: str, max_parallel: int) -> dict[str, Any]:
    """One `ingest/default` run to its end; its wall time as the server recorded it (start to end)."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        run = run_deployment("ingest/default", parameters={"max_parallel": max_parallel}, timeout=None, poll_interval=1)
    with _client(api_url) as client:
        run = client.read_flow_run(run.id)
    return {"wall": (run.end_time - run.start_time).total_seconds(), "ok": run.state.is_completed(),
            "message": run.state.message or ""}


def _fresh_world(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path,
                 tag: str) -> tuple[str, dict[str, str]]:
    """A new database and stage cache, published to the server for the workers; returns (db url, env)."""
    db_url = pg.create_database("fleet")
    run_dir = Path(tempfile.mkdtemp(prefix=f"fleet-{tag}-", dir=folder))
    env = child_env(world, fake.fields, server.api_url, db_url, run_dir, {"DEEPGRAM_MAX_CONCURRENCY": "16"})
    _gdr("server", "publish", env=env)
    fake.reset()
    return db_url, env


def _processed_by(db_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT processed_by, count(*) FROM episodes WHERE status = 'processed' GROUP BY 1").fetchall()
    return {by.rsplit("/", 1)[-1]: n for by, n in rows}


def throughput_run(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path,
                   count: int) -> dict[str, Any]:
    fake.set(deepgram_latency=DEEPGRAM_LATENCY, openai_latency=OPENAI_LATENCY)
    db_url, _ = _fresh_world(pg, fake, world, server, folder, f"w{count}")
    workers = Workers(server.api_url, folder / f"homes-{time.monotonic_ns()}", count)
    try:
        load_before, cpu0, server0 = load(), workers.cpu(), server.cpu()
        result = _deployment_run(server.api_url, PER_WORKER * count)
        lat = episode_latencies(world, fake.requests())
        ideal = max(sum(lat.values()) / (PER_WORKER * count), max(lat.values()))
        return {"workers": count, "wall": round(result["wall"], 2), "ideal": round(ideal, 2),
                "efficiency": round(ideal / result["wall"], 3), "ok": result["ok"], "message": result["message"][:300],
                "processed_by": _processed_by(db_url), "cpu_workers": round(workers.cpu() - cpu0, 1),
                "cpu_server": round(server.cpu() - server0, 1), "load_before": load_before}
    finally:
        workers.stop()
        pg.drop_database(db_url)


def overhead_run(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path,
                 mode: str) -> dict[str, Any]:
    """Zero latency, one episode at a time: wall and CPU (client + workers) of one fan-out."""
    fake.set()
    db_url, env = _fresh_world(pg, fake, world, server, folder, mode)
    try:
        if mode in ("bare", "threads"):
            r = run_child({"mode": "bare" if mode == "bare" else "flow", "workers": 1}, env)
            return {"wall": r["wall"], "cpu": r["cpu"], "ok": r["ok"]}
        if mode == "deployments":
            workers = Workers(server.api_url, folder / f"homes-{time.monotonic_ns()}", 1)
            try:
                cpu0 = workers.cpu()
                r = _deployment_run(server.api_url, 1)
                return {"wall": r["wall"], "cpu": workers.cpu() - cpu0, "ok": r["ok"]}
            finally:
                workers.stop()
        serving = subprocess.Popen([sys.executable, "-m", "bench.fleet", "--serve-tasks"], env=env, cwd=REPO_ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            cpu0 = tree_cpu(serving.pid)
            done = subprocess.run([sys.executable, "-m", "bench.fleet", "--delay-all"], env=env, cwd=REPO_ROOT,
                                  capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith('{"wall"')]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"task-worker client failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
            r = json.loads(lines[-1])
            return {"wall": r["wall"], "cpu": r["cpu"] + tree_cpu(serving.pid) - cpu0, "ok": r["ok"]}
        finally:
            os.killpg(serving.pid, signal.SIGTERM)
            serving.wait(timeout=30)
    finally:
        pg.drop_database(db_url)


def run(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], folder: Path, *, quick: bool = False) -> dict[str, Any]:
    rounds = 1 if quick else ROUNDS
    out: dict[str, Any] = {"episodes": len(world["audio"]), "per_worker": PER_WORKER, "rounds": rounds,
                           "throughput": [], "overhead": []}
    with prefect_server(pg, "process") as server:
        env = {**os.environ, "PREFECT_API_URL": server.api_url, "PWD": str(REPO_ROOT)}
        for args in (["work-pool", "create", "default", "--type", "process"], ["--no-prompt", "deploy", "--all"]):
            subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO_ROOT, check=True, capture_output=True)
        for i in range(rounds):
            for count in (1, 2):
                row = throughput_run(pg, fake, world, server, folder, count)
                out["throughput"].append({"round": i + 1, **row})
                log(f"  fleet round {i + 1}, {count} worker(s): wall {row['wall']:.1f} s (ideal {row['ideal']:.1f}), "
                    f"processed by {row['processed_by']}{'' if row['ok'] else ' FAILED: ' + row['message']}")
        for i in range(rounds):
            for mode in ("bare", "threads", "deployments", "task_workers"):
                r = overhead_run(pg, fake, world, server, folder, mode)
                out["overhead"].append({"round": i + 1, "mode": mode, "wall": round(r["wall"], 2),
                                        "cpu": round(r["cpu"], 2), "ok": r["ok"], "load": load()})
                log(f"  fleet overhead round {i + 1}, {mode}: wall {r['wall']:.1f} s, CPU {r['cpu']:.1f} s")
    out["summary"] = summarise(out)
    return out


def summarise(out: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds; overhead per episode = (mode - bare of the same round) / episodes."""
    n = out["episodes"]
    walls = {c: statistics.median(r["wall"] for r in out["throughput"] if r["workers"] == c) for c in (1, 2)}
    per_round: dict[str, list[tuple[float, float]]] = {}
    for i in range(1, out["rounds"] + 1):
        rows = {r["mode"]: r for r in out["overhead"] if r["round"] == i}
        for mode in ("threads", "deployments", "task_workers"):
            per_round.setdefault(mode, []).append(((rows[mode]["wall"] - rows["bare"]["wall"]) / n,
                                                   (rows[mode]["cpu"] - rows["bare"]["cpu"]) / n))
    return {"wall_one": walls[1], "wall_two": walls[2], "speedup": round(walls[1] / walls[2], 2),
            "overhead": {mode: {"wall": round(statistics.median(w for w, _ in v), 3),
                                "cpu": round(statistics.median(c for _, c in v), 3)} for mode, v in per_round.items()}}


# --- the Markdown fragment ---------------------------------------------------------------------------------


MODES = {"threads": "threads (`gdr ingest`, a run of its own)",
         "deployments": "per-episode deployment runs (`run_deployment`, process worker)",
         "task_workers": "Prefect task workers (`.delay()`; the prototype in bench/fleet.py, without claims or summary)"}


def write_markdown(fleet: dict[str, Any], path: Path = FRAGMENT) -> None:
    s = fleet["summary"]
    lines = ["## 7. Several workers: one deployment run, and the cost of each fan-out", "",
             "Written by `bench/fleet.py` (`uv run python -m bench.run_all --only fleet`); method in its docstring. "
             f"{fleet['episodes']} episodes; each worker `gdr worker start`, MAX_PARALLEL_EPISODES={fleet['per_worker']}, "
             "its own GDR_HOME, only PREFECT_API_URL; both on this machine's 2 cores.", "",
             f"**Throughput, alternating rounds** (target: two workers >= 1.8x one): median {s['wall_one']:.1f} s with one, "
             f"{s['wall_two']:.1f} s with two: **{s['speedup']:.2f}x**.", "",
             "| round | workers | wall s | ideal s | efficiency | processed by | CPU workers / server s | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in fleet["throughput"]:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(r["processed_by"].items()))
        lines.append(f"| {r['round']} | {r['workers']} | {r['wall']:.1f}{'' if r['ok'] else ' (failed)'} | {r['ideal']:.1f} | "
                     f"{r['efficiency']:.2f} | {by} | {r['cpu_workers']} / {r['cpu_server']} | {r['load_before']} |")
    lines += ["", "**Overhead per episode of each fan-out** (zero latency, one episode at a time, minus the same library "
              f"calls without Prefect in the same round; medians of {fleet['rounds']} rounds; before this work: "
              f"{PREVIOUS_OVERHEAD['wall']} s wall / {PREVIOUS_OVERHEAD['cpu']} s CPU):", "",
              "| fan-out | wall s / episode | CPU s / episode | rounds (wall s for all episodes) |", "| --- | --- | --- | --- |"]
    for mode, label in MODES.items():
        o = s["overhead"][mode]
        walls = ", ".join(f"{r['wall']:.1f}" for r in fleet["overhead"] if r["mode"] == mode)
        lines.append(f"| {label} | {o['wall']:.2f} | {o['cpu']:.2f} | {walls} |")
    bare = ", ".join(f"{r['wall']:.1f}" for r in fleet["overhead"] if r["mode"] == "bare")
    lines += [f"| (bare library calls, the baseline) | — | — | {bare} |", ""]
    lines += ["All three run against `prefect server start` (UI and all services, what a fleet has), not section 1's "
              "ephemeral server, so the threads row is not the same measurement as the 0.28 s quoted there.", ""]
    o = s["overhead"]
    lines += [
        "**Which fan-out, and why.** The figures favour task workers "
        f"({o['task_workers']['wall']:.2f} s / {o['task_workers']['cpu']:.2f} s per episode) over per-episode deployment "
        f"runs ({o['deployments']['wall']:.2f} s / {o['deployments']['cpu']:.2f} s): a deployment run waits for a worker's "
        "poll (`gdr worker start` polls every 5 s) and starts a Python process that imports Prefect and the library "
        "and opens its own database pool and providers; a task worker keeps one process and context for all its "
        "episodes. We keep `run_deployment` all the same, for what the task workers would lose: each episode is a "
        "flow run of its own on the pool, so its own Retry works and lands its work under it (tests/test_fleet.py); "
        "a machine's share is its worker's `--limit` (MAX_PARALLEL_EPISODES); a dead worker's runs are marked Crashed "
        "by the heartbeat automation (it watches flow runs only; nothing would end the task runs of a dead task "
        "worker) and the parent's retry reruns them elsewhere; one process worker per machine serves both "
        "deployments, where task workers need a `serve` process beside it. The price is paid once per episode: "
        "on this world (5-14 s of provider time per episode) with both workers on the same 2 cores, the episode "
        "processes' CPU (the workers' CPU column) is what keeps two workers below the 1.8x target; two machines "
        "bring their own cores.", ""]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-tasks", action="store_true")
    parser.add_argument("--delay-all", action="store_true")
    args = parser.parse_args()
    # Imported by name, not run as __main__: the task's key must be the same in the worker and the client.
    from bench import fleet

    if args.serve_tasks:
        fleet._serve_tasks()
    elif args.delay_all:
        print(json.dumps(fleet._delay_all()), flush=True)


if __name__ == "__main__":
    main()
