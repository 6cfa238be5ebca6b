"""Section 1: parallel scaling of the real `ingest` flow, and Prefect's own overhead per episode.

16 episodes (distinct sine mp3s as long as the episodes they stand for, declared to the fake Deepgram) go through
the `ingest` flow against the fake API in its own process, configured like the real services
(Deepgram 2 s + audio seconds / 200, OpenAI 0.3 s per request), with MAX_PARALLEL_EPISODES = 1, 2, 4,
8, 16. Every run gets a fresh application database, stage cache and transcripts folder, and runs in
a fresh Python process (imports excluded from the timing; the flow call is timed as a user waits for it).

ideal(w) = max(sum of per-episode latencies / w, longest episode), per-episode latency =
2 + seconds/200 + 0.3 x embedding requests; efficiency = ideal / wall.

Prefect's overhead per episode: the same 16 episodes with zero-latency fakes, flow vs the same
the same episode sequence called directly ("bare": `process_episode` in threads, no Prefect), one episode at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Postgres, PrefectServer, RemoteFakeAPI, load, log, prefect_server
from tests.support.builders import make_audio
from tests.support.fakeapi import peak_overlap

DEEPGRAM_LATENCY = (2.0, 1 / 200)
OPENAI_LATENCY = 0.3
WORKERS = [1, 2, 4, 8, 16]
EPISODES = 16


def durations(n: int = EPISODES, low: float = 10, high: float = 40) -> list[float]:
    """Episode lengths in seconds, evenly spread from `low` to `high` minutes (shuffled deterministically)."""
    minutes = [low + (high - low) * i / (n - 1) for i in range(n)]
    order = sorted(range(n), key=lambda i: (i * 7) % n)  # longest not last: a fair mix in submission order
    return [round(minutes[i] * 60) for i in order]


def podcast_length_audio(path: Path, seconds: float, frequency: int) -> Path:
    """An mp3 as long as the episode it stands for (a distinct 10-second tone, repeated without re-encoding),
    so its size tells the flow how long the episode is, as a real file's does."""
    clip = make_audio(path.with_suffix(".clip.mp3"), 10, frequency)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(clip), "-t", str(seconds),
                    "-c", "copy", str(path)], check=True)
    clip.unlink()
    return path


def make_world(folder: Path, seconds: list[float]) -> dict[str, Any]:
    """Audio + catalogue for the episodes; returns paths for the child processes."""
    audio_dir = folder / "audio"
    entries, audio = [], []
    for i, s in enumerate(seconds):
        name = f"BENCH-{i:02d}.mp3"
        podcast_length_audio(audio_dir / name, s, 200 + 37 * i)
        entries.append({"episode_id": f"B{i:02d}", "file_name": name, "title": f"Bench episode {i}",
                        "speakers_map": {"0": "Ann Host", "1": "Bob Guest"}})
        audio.append((audio_dir / name, s))
    (folder / "episodes.json").write_text(json.dumps(entries))
    return {"audio_dir": str(audio_dir), "episodes_file": str(folder / "episodes.json"), "audio": audio}


def child_env(world: dict[str, Any], fake_fields: dict[str, str], api_url: str, db_url: str, run_dir: Path,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GDR_"))}
    for name in ("DATABASE_URL", "DB_HOST", "DEEPGRAM_API_KEY", "OPENAI_API_KEY", "FEED_URL", "CACHE_DIR",
                 "RESULT_STORAGE_BLOCK", "EMBEDDING_MODEL", "EMBEDDING_DIMENSIONS", "MAX_PARALLEL_EPISODES"):
        env.pop(name, None)
    env.update({k.upper(): v for k, v in fake_fields.items()})
    env.update({
        "TRANSCRIBER": "deepgram",
        "EMBEDDER": "openai",
        "DATABASE_URL": db_url,
        "GDR_HOME": str(run_dir / "home"),
        "CACHE_DIR": str(run_dir / "cache"),
        "EPISODES_FILE": world["episodes_file"],
        "AUDIO_DIR": world["audio_dir"],
        "TRANSCRIPTS_DIR": str(run_dir / "transcripts"),
        "TIKTOKEN_CACHE_DIR": str(Path(world["audio_dir"]).parent / "tiktoken"),
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(run_dir / "prefect-home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(run_dir / "prefect-results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",  # as `gdr ingest` sets it
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


# --- the child: one run in a fresh process -------------------------------------------------------------


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    if spec.get("trace"):
        _trace_api_calls()
    if spec["mode"] == "flow":
        from gent_disagreement_rag.orchestration.flows import ingest

        imported = time.perf_counter()
        load_before = os.getloadavg()[0]
        cpu0 = time.process_time()
        started, mono = time.perf_counter(), time.monotonic()
        state = ingest(max_parallel=spec["workers"], force=spec.get("force", False), return_state=True)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        ok = state.is_completed()
        summaries = state.result(raise_on_failure=False) if ok else []
        summaries = summaries if isinstance(summaries, list) else []
        if not ok:
            from gent_disagreement_rag.settings import Settings
            from gent_disagreement_rag.storage import episodes as episode_store
            from gent_disagreement_rag.storage.database import Database

            with Database.from_settings(Settings()) as db:
                errors = sorted({(r.last_error or "")[:500] for r in episode_store.list_episodes(db) if r.status != "processed"})
            state_message = f"{state.message}; errors: {errors[:3]}"
        else:
            state_message = state.message
        return {"wall": wall, "cpu": cpu, "import_seconds": imported - t0, "ok": ok, "message": state_message,
                "mono_start": mono,
                "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                "episodes": [{"episode": s["episode"], "seconds": s["seconds"], "status": s["status"]}
                             for s in summaries]}
    # "bare": the library's episode sequence, no Prefect, `workers` episodes at a time in threads
    from concurrent.futures import ThreadPoolExecutor

    from gent_disagreement_rag.ingest.context import RunContext
    from gent_disagreement_rag.ingest.plan import plan_episodes
    from gent_disagreement_rag.ingest.sequence import process_episode
    from gent_disagreement_rag.ingest.stages import register_catalogue
    from gent_disagreement_rag.settings import Settings

    imported = time.perf_counter()
    load_before = os.getloadavg()[0]
    cpu0 = time.process_time()
    started = time.perf_counter()
    ctx = RunContext.open(Settings(max_parallel_episodes=spec["workers"]))
    register_catalogue(ctx)
    plan = plan_episodes(ctx.settings, ctx.db, None, spec.get("force", False))

    def one(job):
        t = time.perf_counter()
        process_episode(ctx, job, "bare")
        return {"episode": job.episode_id, "seconds": round(time.perf_counter() - t, 2), "status": "processed"}

    with ThreadPoolExecutor(spec["workers"]) as pool:
        episodes = list(pool.map(one, plan.jobs))
    wall = time.perf_counter() - started
    ctx.close()
    return {"wall": wall, "cpu": time.process_time() - cpu0, "import_seconds": imported - t0, "ok": True,
            "message": "", "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
            "episodes": episodes}


_api_calls: list[tuple[str, str, float, float]] = []


def _trace_api_calls() -> None:
    """Record every HTTP request the flow process makes through httpx: (method, path, start, seconds)."""
    import re

    import httpx

    original_async, original_sync = httpx.AsyncClient.send, httpx.Client.send

    async def send_async(self, request, *args, **kwargs):
        t = time.monotonic()
        try:
            return await original_async(self, request, *args, **kwargs)
        finally:
            _api_calls.append((request.method, re.sub(r"[0-9a-f-]{36}", "{id}", request.url.path), t, time.monotonic() - t))

    def send_sync(self, request, *args, **kwargs):
        t = time.monotonic()
        try:
            return original_sync(self, request, *args, **kwargs)
        finally:
            _api_calls.append((request.method, re.sub(r"[0-9a-f-]{36}", "{id}", request.url.path), t, time.monotonic() - t))

    httpx.AsyncClient.send, httpx.Client.send = send_async, send_sync


def code_env(env: dict[str, str], code: Path | None) -> dict[str, str]:
    """`env` for a child that runs the checkout `code` (its package, flows and bench) instead of this one."""
    return env if code is None else {**env, "PYTHONPATH": f"{code / 'src'}{os.pathsep}{code}"}


def run_child(spec: dict[str, Any], env: dict[str, str], profile: Path | None = None,
              code: Path | None = None) -> dict[str, Any]:
    """One run in a fresh process, of this checkout or (`code`) of another one's `bench.parallel` child."""
    args = [sys.executable, "-m", "bench.parallel", "--child", json.dumps(spec)]
    if profile is not None:
        args = ["py-spy", "record", "-o", str(profile), "-f", "speedscope", "-r", "50", "--subprocesses", "--", *args]
    done = subprocess.run(args, env=code_env(env, code), capture_output=True, text=True,
                          cwd=code or Path(__file__).resolve().parents[1])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{\"wall\"")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


# --- the parent ------------------------------------------------------------------------------------------


def episode_latencies(world: dict[str, Any], requests: list[dict[str, Any]], fake: RemoteFakeAPI | None = None) -> dict[str, float]:
    """Modelled latency per episode: 2 + s/200 + 0.3 x its embedding requests (requests split evenly
    when they cannot be told apart: one per episode in practice)."""
    embeds = sum(1 for r in requests if r["path"] == "/v1/embeddings")
    per_episode = embeds / len(world["audio"])
    base, per_second = DEEPGRAM_LATENCY
    return {f"B{i:02d}": base + s * per_second + OPENAI_LATENCY * per_episode for i, (_, s) in enumerate(world["audio"])}


def one_run(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, workers: int, folder: Path,
            *, mode: str = "flow", extra_env: dict[str, str] | None = None, keep: bool = False,
            profile: Path | None = None, trace: bool = False, code: Path | None = None) -> dict[str, Any]:
    db_url = pg.create_database("par")
    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{mode}-{workers}-", dir=folder))
    fake.reset()
    try:
        env = child_env(world, fake.fields, server.api_url, db_url, run_dir,
                        {"DEEPGRAM_MAX_CONCURRENCY": str(max(workers, 10)), **(extra_env or {})})
        cpu = (server.cpu(), pg.cpu(), fake.cpu())
        result = run_child({"mode": mode, "workers": workers, "trace": trace}, env, profile, code)
        result["cpu_server"], result["cpu_postgres"], result["cpu_fake"] = (
            round(after - before, 2) for after, before in zip((server.cpu(), pg.cpu(), fake.cpu()), cpu))
        result["requests"] = fake.requests()
        if keep:
            result["db_url"], result["run_dir"], result["env"] = db_url, str(run_dir), env
        return result
    finally:
        if not keep:
            pg.drop_database(db_url)


def scaling(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path,
            workers: list[int], *, mode: str = "flow", extra_env: dict[str, str] | None = None,
            code: Path | None = None) -> list[dict[str, Any]]:
    fake.set(deepgram_latency=DEEPGRAM_LATENCY, openai_latency=OPENAI_LATENCY)
    rows = []
    for w in workers:
        r = one_run(pg, fake, world, server, w, folder, mode=mode, extra_env=extra_env, code=code)
        lat = episode_latencies(world, r["requests"])
        total, longest = sum(lat.values()), max(lat.values())
        ideal = max(total / w, longest)
        listen = [x for x in r["requests"] if x["path"] == "/v1/listen"]
        first = min((x["started"] for x in listen), default=None)
        rows.append({
            "workers": w, "wall": round(r["wall"], 2), "ideal": round(ideal, 2), "efficiency": round(ideal / r["wall"], 3),
            "ok": r["ok"], "message": "" if r["ok"] else r["message"][:500],
            "load_before": r["load_before"], "load_after": r["load_after"],
            "cpu_flow": round(r["cpu"], 1), "cpu_server": r["cpu_server"], "cpu_postgres": r["cpu_postgres"],
            "cpu_fake": r["cpu_fake"],
            "listen_requests": len(listen),
            "embedding_requests": sum(1 for x in r["requests"] if x["path"] == "/v1/embeddings"),
            "first_request_after": round(first - r["mono_start"], 2) if first is not None and "mono_start" in r else None,
            "peak_listen_concurrency": peak_overlap([(x["started"], x["ended"]) for x in listen]),
        })
        log(f"  {mode} w={w}: wall {r['wall']:.1f} s, ideal {ideal:.1f} s, efficiency {ideal / r['wall']:.2f}, "
            f"flow-process CPU {r['cpu']:.1f} s{'' if r['ok'] else ' FAILED: ' + str(r['message'])}")
    return rows


def with_speedup(rows: list[dict[str, Any]], base_wall: float | None) -> list[dict[str, Any]]:
    for row in rows:
        row["speedup"] = round(base_wall / row["wall"], 2) if base_wall else None
    return rows


def overhead(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path,
             extra_env: dict[str, str] | None = None, code: Path | None = None) -> dict[str, Any]:
    """Zero-latency fakes, one episode at a time: flow vs the bare library calls."""
    fake.set()
    flow = one_run(pg, fake, world, server, 1, folder, extra_env=extra_env, code=code)
    bare = one_run(pg, fake, world, server, 1, folder, mode="bare", extra_env=extra_env, code=code)
    n = len(world["audio"])
    return {
        "flow_wall": round(flow["wall"], 2), "bare_wall": round(bare["wall"], 2),
        "flow_cpu": round(flow["cpu"], 2), "bare_cpu": round(bare["cpu"], 2),
        "per_episode_flow": round(flow["wall"] / n, 3), "per_episode_bare": round(bare["wall"] / n, 3),
        "per_episode_overhead": round((flow["wall"] - bare["wall"]) / n, 3),
        "per_episode_overhead_cpu": round((flow["cpu"] - bare["cpu"]) / n, 3),
        "load": load(),
    }


def run(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path,
        *, quick: bool = False) -> dict[str, Any]:
    """The whole section: overhead at zero latency, then scaling on the ephemeral server and (full run) on
    a `prefect server start` process."""
    base, per_second = DEEPGRAM_LATENCY
    out: dict[str, Any] = {
        "episodes": len(world["audio"]),
        "audio_minutes": [round(s / 60, 1) for _, s in world["audio"]],
        "latency_model": f"Deepgram {base:g} s + audio/{1 / per_second:g}; OpenAI {OPENAI_LATENCY:g} s per request",
        "backends": {},
    }
    log("  parallel: Prefect overhead, zero-latency fakes, 1 worker (flow vs the same library calls)")
    out["overhead"] = overhead(pg, fake, world, server, folder)
    o = out["overhead"]
    log(f"  parallel: flow {o['per_episode_flow']:.2f} s/episode vs bare {o['per_episode_bare']:.2f} s/episode: "
        f"overhead {o['per_episode_overhead']:.2f} s wall, {o['per_episode_overhead_cpu']:.2f} s CPU per episode")
    workers = [1, 4] if quick else WORKERS
    rows = scaling(pg, fake, world, server, folder, workers)
    base_wall = rows[0]["wall"]
    out["backends"]["ephemeral"] = {"startup_seconds": server.startup_seconds, "rows": with_speedup(rows, base_wall)}
    log("  parallel: the same library calls without Prefect (threads), to see what the orchestration costs")
    rows = scaling(pg, fake, world, server, folder, [4] if quick else [4, 8, 16], mode="bare")
    out["backends"]["bare"] = {"startup_seconds": 0.0, "rows": with_speedup(rows, base_wall)}
    if not quick:
        log("  parallel: the same on a `prefect server start` process")
        with prefect_server(pg, "process") as other:
            log(f"  parallel: `prefect server start` ready in {other.startup_seconds} s")
            rows = scaling(pg, fake, world, other, folder, [4, 8, 16])
            out["backends"]["process"] = {"startup_seconds": other.startup_seconds, "rows": with_speedup(rows, base_wall)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    args, _ = parser.parse_known_args()
    if args.child:
        result = _child(json.loads(args.child))
        if _api_calls:
            result["api_calls"] = _api_calls
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
