"""Postgres faults: down at start (one clear line, exit code 1), restarted in the middle of a run, a pooled
connection killed while idle."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.fakeapi import (
    EMBEDDINGS,
    LISTEN,
)
from tests.support.waiting import Chaos, wait_for
from tests.support.world import DB_PASSWORD, MODEL_ID, World, backends, make_tones, run_flow, task_runs


def test_postgres_down_at_start_is_one_clear_line_and_exit_code_1(world: World) -> None:
    from tests.support.builders import free_port

    world.catalogue(["Z-0"])
    url = f"postgresql://gdr:{DB_PASSWORD}@127.0.0.1:{free_port()}/gdr"  # nothing listens there
    result = world.gdr("ingest", DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith('error: cannot connect to Postgres: connection failed: connection to server at '
                                    '"127.0.0.1", port ')
    assert result.stderr.endswith("Connection refused\n") and result.stderr.count("\n") == 1, result.stderr
    assert DB_PASSWORD not in result.stderr
    assert world.api.requests == []


@pytest.fixture
def own_postgres() -> Any:
    """A Postgres of this test's own, to stop and start without disturbing the session's."""
    from gent_disagreement_rag.storage.embedded import embedded_url, stop_embedded

    home = Path(tempfile.mkdtemp(prefix="gdr-test-restart-"))
    home.chmod(0o755)
    settings = Settings(_env_file=None, gdr_home=home)
    url = embedded_url(settings)
    try:
        yield url, settings
    finally:
        stop_embedded(settings)
        shutil.rmtree(home, ignore_errors=True)


def restart_postgres(settings: Settings, down_seconds: float) -> tuple[datetime, datetime]:
    """Stop Postgres, wait, start it again: (a moment it was still down, a moment it was accepting again)."""
    from gent_disagreement_rag.storage.embedded import embedded_server, stop_embedded

    assert stop_embedded(settings)
    time.sleep(down_seconds)
    still_down = datetime.now(UTC)
    embedded_server(settings.pgdata)
    return still_down, datetime.now(UTC)


@pytest.mark.slow
def test_postgres_restarted_mid_run(world: World, own_postgres, monkeypatch) -> None:
    url, pg = own_postgres
    world.app_env["DATABASE_URL"] = url
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DB_POOL_TIMEOUT", "1")
    ids = world.catalogue(["M-0", "M-1", "M-2"])

    # 1. Postgres goes away while the episodes are being transcribed and stays away longer than a
    #    worker waits for a connection; the transcriptions already paid for must not be asked again.
    world.api.deepgram_latency = (2.0, 0.0)

    def outage() -> None:
        wait_for(lambda: len(world.api.requests_to(LISTEN)) == 3, what="three transcriptions in flight")
        restart_postgres(pg, down_seconds=4)

    chaos = Chaos(outage)
    state = run_flow(max_parallel=3)
    chaos.join()
    assert state.is_completed(), state.message
    assert world.listen_counts() == {e: 1 for e in ids}
    assert world.ledger("transcribe") == {e: 1 for e in ids}
    world.assert_consistent()

    # 2. Postgres restarts while an episode is being stored: the store transaction dies with its
    #    connection, the pool replaces its broken connections, and the store stage's retry succeeds.
    make_tones([(world.audio("M-3"), 2.0, 990)])
    world.write_catalogue([{"episode_id": e, "file_name": f"{e}.mp3"} for e in [*ids, "M-3"]])
    locker = psycopg.connect(url)  # holds the store at its embeddings COPY until the restart
    locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (MODEL_ID,))

    def restart_while_storing() -> None:
        try:
            wait_for(lambda: backends(world, "wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'") == 1,
                     what="the store to start")
            restarts.append(restart_postgres(pg, down_seconds=0.5))
        finally:
            locker.close()  # (dead already after a restart; otherwise this unblocks the store)

    restarts: list[tuple[datetime, datetime]] = []

    world.api.deepgram_latency = (0.0, 0.0)
    chaos = Chaos(restart_while_storing)
    state = run_flow()
    chaos.join()
    assert state.is_completed(), state.message
    assert world.statuses() == {e: "processed" for e in [*ids, "M-3"]}
    assert world.listen_counts()["M-3"] == 1 and len(world.api.requests_to(EMBEDDINGS)) == 4
    # The attempt the restart killed; retries (their delays are jittered) that started while Postgres was still
    # down; then one attempt, once it was starting up or back, which succeeded on the replaced connections. (An
    # attempt may start while Postgres is starting up and still succeed, so "back" is only known to lie between the
    # two marks.)
    [run] = task_runs("store-M-3")
    starts = [s.timestamp for s in task_run_states(run.id) if s.name in ("Running", "Retrying") and s.type.value == "RUNNING"]
    assert run.state_name == "Completed" and run.run_count == len(starts) >= 2, (run.state_name, run.run_count, starts)
    [(still_down, accepting)] = restarts
    assert starts[0] < still_down < starts[-1], (starts, restarts)
    assert len([t for t in starts if t > accepting]) <= 1, (starts, restarts)
    world.assert_consistent()


def task_run_states(task_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sorted(client.read_task_run_states(task_run_id), key=lambda s: s.timestamp)


def test_a_pooled_connection_killed_while_idle_is_replaced_unseen(settings: Settings, pg_server: str) -> None:
    """A Postgres restart or an idle timeout kills connections in the pool; the next user must not see it."""
    with Database.from_settings(settings) as db:
        assert episode_store.list_episodes(db) == []
        name = psycopg.conninfo.conninfo_to_dict(db.url)["dbname"]
        with psycopg.connect(pg_server, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            assert killed.fetchall()
            deadline = time.monotonic() + 30
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the killed sessions did not end"
                time.sleep(0.05)
        assert episode_store.list_episodes(db) == []
        assert db.pool.get_stats().get("connections_lost", 0) >= 1
