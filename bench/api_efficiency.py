"""Section 2: provider requests per episode, against the old one-embedding-request-per-segment approach,
and a fully cached rerun.

The 16 episodes of section 1 go through the real `ingest` flow once (all at once, the fake API at the
realistic latencies, a fresh database and stage cache); the fake API records every request. Then:
- the same flow with `force=True` (every episode again) on the same database and stage cache: every
  stage must come from the cache, so no request may reach a provider; its wall time;
- `gdr ingest` with nothing new: the command a nightly run or a second `make run` executes;
- the old approach (one embeddings request per segment, as the user's original code did before
  batching): the same chunks of one episode sent one request each through the same OpenAI SDK client,
  timed against the fake at the same 0.3 s per request, next to the batched call.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from bench import parallel
from bench.harness import REPO_ROOT, Postgres, PrefectServer, RemoteFakeAPI, load, log

LISTEN, EMBEDDINGS = "/v1/listen", "/v1/embeddings"


def _ledger(db_url: str) -> dict[str, dict[str, int]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT episode_id, stage, sum(requests), sum(tokens) FROM provider_calls GROUP BY episode_id, stage"
        ).fetchall()
        segments = dict(conn.execute("SELECT episode_id, count(*) FROM segments GROUP BY episode_id").fetchall())
    out: dict[str, dict[str, int]] = {}
    for episode_id, stage, requests, tokens in rows:
        entry = out.setdefault(episode_id, {"segments": segments.get(episode_id, 0)})
        entry[f"{stage}_requests"] = int(requests)
        entry[f"{stage}_tokens"] = int(tokens)
    return out


def _old_approach(env: dict[str, str], db_url: str, episode_id: str) -> dict[str, Any]:
    """One request per segment vs one batched call, for one episode's stored chunks, in a child process."""
    code = f"""
import json, time, psycopg
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.providers.embedders.openai import OpenAIEmbedder
with psycopg.connect({db_url!r}) as conn:
    texts = [r[0] for r in conn.execute("SELECT text FROM segments WHERE episode_id = %s ORDER BY position", ({episode_id!r},))]
embedder = OpenAIEmbedder.from_settings(Settings())
embedder.embed(texts[:1])  # connection, tokenizer
t = time.perf_counter(); batch = embedder.embed(texts); batched = time.perf_counter() - t
t = time.perf_counter(); tokens = sum(embedder.embed([x]).tokens for x in texts); per_segment = time.perf_counter() - t
print(json.dumps({{"segments": len(texts), "batched_seconds": batched, "batched_requests": batch.requests,
                   "batched_tokens": batch.tokens, "per_segment_seconds": per_segment,
                   "per_segment_requests": len(texts), "per_segment_tokens": tokens}}))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return __import__("json").loads(done.stdout.strip().splitlines()[-1])


def run(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path,
        *, quick: bool = False) -> dict[str, Any]:
    fake.set(deepgram_latency=parallel.DEEPGRAM_LATENCY, openai_latency=parallel.OPENAI_LATENCY)
    first = parallel.one_run(pg, fake, world, server, len(world["audio"]), folder, keep=True)
    db_url, env = first["db_url"], first["env"]
    try:
        listen = [r for r in first["requests"] if r["path"] == LISTEN]
        embeds = [r for r in first["requests"] if r["path"] == EMBEDDINGS]
        per_audio = Counter(r["sha256"] for r in listen)
        ledger = _ledger(db_url)
        n = len(world["audio"])
        segments = [e["segments"] for e in ledger.values()]
        tokens = [e.get("embed_tokens", 0) for e in ledger.values()]
        result: dict[str, Any] = {
            "episodes": n,
            "first_run": {"wall": round(first["wall"], 1), "ok": first["ok"], "load": first["load_before"]},
            "transcription_requests_per_episode": {"min": min(per_audio.values()), "max": max(per_audio.values()),
                                                   "episodes_transcribed": len(per_audio)},
            "embedding_requests_per_episode": round(len(embeds) / n, 2),
            "embedding_inputs_per_request": round(sum(r["inputs"] for r in embeds) / max(len(embeds), 1), 1),
            "segments_per_episode": {"mean": round(sum(segments) / n, 1), "min": min(segments), "max": max(segments)},
            "embedding_tokens_per_episode": {"mean": round(sum(tokens) / n), "min": min(tokens), "max": max(tokens)},
            "old_requests_per_episode": round(sum(segments) / n, 1),
        }
        log(f"  api: {result['embedding_requests_per_episode']} embedding requests/episode "
            f"(old approach: {result['old_requests_per_episode']}), transcription requests/episode "
            f"{result['transcription_requests_per_episode']['min']}-{result['transcription_requests_per_episode']['max']}")

        # A fully cached rerun: every episode again (force), same database and stage cache.
        fake.reset()
        cpu_server = server.cpu()
        rerun = parallel.run_child({"mode": "flow", "workers": n, "force": True}, env)
        requests = fake.requests()
        result["cached_rerun"] = {"wall": round(rerun["wall"], 2), "requests": len(requests), "ok": rerun["ok"],
                                  "episodes": n, "server_cpu": round(server.cpu() - cpu_server, 1),
                                  "load": rerun["load_before"]}
        log(f"  api: cached rerun (force, {n} episodes): {len(requests)} provider requests, {rerun['wall']:.1f} s")

        # `gdr ingest` with nothing to do (exits before starting Prefect).
        fake.reset()
        t = time.perf_counter()
        done = subprocess.run([str(Path(sys.executable).with_name("gdr")), "ingest"], env=env, capture_output=True,
                              text=True, cwd=REPO_ROOT)
        result["noop_cli"] = {"wall": round(time.perf_counter() - t, 2), "requests": len(fake.requests()),
                              "exit": done.returncode, "output": done.stdout.strip().splitlines()[-1:],
                              "load": load()}
        log(f"  api: `gdr ingest` with nothing to do: {result['noop_cli']['wall']} s, "
            f"{result['noop_cli']['requests']} requests")

        # Old approach vs batched, on the shortest episode's chunks (one per segment takes 0.3 s per chunk).
        seconds, episode_id = min((s, f"B{i:02d}") for i, (_, s) in enumerate(world["audio"]))
        fake.reset()
        old = _old_approach(env, db_url, episode_id)
        old.update(episode=episode_id, audio_minutes=round(seconds / 60, 1), load=load())
        result["old_vs_batched"] = old
        log(f"  api: episode {episode_id} ({seconds / 60:.0f} min, {old['segments']} segments): batched "
            f"{old['batched_requests']} request(s) {old['batched_seconds']:.2f} s; one per segment "
            f"{old['per_segment_requests']} requests {old['per_segment_seconds']:.1f} s")
        return result
    finally:
        pg.drop_database(db_url)
