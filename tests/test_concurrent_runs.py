"""Runs and workers at once: two `gdr ingest` over one catalogue, sixteen workers on a pool of three connections,
two hundred episodes with sixteen workers (memory flat, connections bounded)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from gent_disagreement_rag.ingest.context import RunContext
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.support.fakeapi import (
    EMBEDDINGS,
)
from tests.support.waiting import Chaos, wait_for
from tests.support.world import MODEL_ID, World, backends, run_flow


@pytest.mark.slow
def test_two_ingest_runs_at_once_over_the_same_catalogue(world: World) -> None:
    ids = world.catalogue([f"D-{i}" for i in range(8)])
    world.api.deepgram_latency = (1.0, 0.0)
    nightly = world.spawn("ingest", "-j", "3", name="nightly")
    manual = world.spawn("ingest", "-j", "3", name="manual")
    codes = [nightly.wait(timeout=300), manual.wait(timeout=300)]  # a deadlock would time out here

    assert codes == [0, 0], world.output("nightly") + world.output("manual")
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    # Each episode claimed by one run at a time (the other reports it busy, not failed): paid for once.
    assert world.listen_counts() == {e: 1 for e in ids}
    assert len(world.api.requests_to(EMBEDDINGS)) == len(ids)
    assert world.ledger("transcribe") == world.ledger("embed") == {e: 1 for e in ids}


@pytest.mark.slow
def test_sixteen_workers_on_a_pool_of_three_wait_for_connections(world: World, monkeypatch) -> None:
    # A run given its context uses that context's pool as it is: here 3 connections for 16 workers.
    settings = Settings(_env_file=None)
    ctx = RunContext(settings, Database.from_settings(settings, max_size=3))
    ids = world.catalogue([f"W-{i:02d}" for i in range(16)])
    with Database.from_settings(world.settings) as db:
        segment_store.ensure_model(db, MODEL_ID, "openai", "text-embedding-3-small", 1536)
    locker = psycopg.connect(world.url)  # three stores hold the three connections until released
    locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (MODEL_ID,))
    waiting: list[int] = []

    def release_when_exhausted() -> None:
        try:
            wait_for(lambda: backends(world, "wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'") == 3,
                     what="three stores holding the three connections")
            pool = ctx.db.pool
            wait_for(lambda: pool.get_stats().get("requests_waiting", 0) >= 10, what="the pool to run dry")
            waiting.append(pool.get_stats()["requests_waiting"])
        finally:
            locker.rollback()

    chaos = Chaos(release_when_exhausted)
    stats: dict[str, int] = {}
    state = run_flow(stats, ctx, max_parallel=16)
    chaos.join()
    locker.close()

    assert state.is_completed(), state.message
    assert world.statuses() == {e: "processed" for e in ids}
    assert waiting and waiting[0] >= 10 and stats["pool_max"] == 3 and stats.get("requests_errors", 0) == 0, (waiting, stats)
    assert world.listen_counts() == {e: 1 for e in ids}  # waiting for a connection never repeated a paid call
    world.assert_consistent()


def memory_kb(pid: int) -> tuple[int, int]:
    """(resident now, resident at most so far) of a process, in kB. Not getrusage: a child's ru_maxrss
    also counts the memory of the parent it was forked from (the test process, before the exec)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@pytest.mark.slow
def test_two_hundred_episodes_sixteen_workers(world: World) -> None:
    ids = world.catalogue([f"L-{i:03d}" for i in range(200)], seconds=2)
    world.api.deepgram_latency = (0.3, 0.0)
    world.api.openai_latency = 0.1
    pool_size = Settings(_env_file=None, max_parallel_episodes=16).pool_size
    proc = world.spawn("ingest", "-j", "16", name="load", MAX_PARALLEL_EPISODES="16")
    samples: list[tuple[int, int, int]] = []  # (episodes processed, RSS kB, sessions on the database)
    peak = 0
    while proc.poll() is None:
        try:
            processed = world.sql("SELECT count(*) FROM episodes WHERE status = 'processed'")[0][0]
            rss, high = memory_kb(proc.pid)
        except (FileNotFoundError, KeyError):  # it has just exited (a zombie has no memory figures)
            continue
        samples.append((processed, rss, backends(world)))
        peak = max(peak, high)
        time.sleep(0.5)
    assert proc.returncode == 0, world.output("load")
    assert world.statuses() == {e: "processed" for e in ids}
    world.assert_consistent()
    assert world.listen_counts() == {e: 1 for e in ids}
    assert len(world.api.requests_to(EMBEDDINGS)) == 200

    # Memory is flat: from the 50th episode to the 200th the process grows by less than 64 MB
    # (a leak of 0.5 MB per episode would show as 75 MB).
    steady = [rss for processed, rss, _ in samples if processed >= 50]
    peak_connections = max(sessions for *_, sessions in samples)
    print(f"\nload: peak RSS {peak / 1024:.0f} MB; RSS at 50 episodes {steady[0] / 1024:.0f} MB, "
          f"highest after {max(steady) / 1024:.0f} MB; peak sessions {peak_connections} "
          f"(pool {pool_size} + 16 claims); {len(samples)} samples")
    assert len(steady) >= 10 and max(steady) - steady[0] < 64 * 1024, steady
    assert peak < 768 * 1024
    # Connections: the pool's plus one claim per worker at most, and none left once the run is over.
    assert peak_connections <= pool_size + 16, samples
    assert backends(world) == 0
