"""A machine of the fleet dies (SIGKILL of every process it runs) at each moment that matters; the night's
work still ends done, with no one pressing Retry: the other machine finishes its episodes, no stage that had
completed is paid again, no segment is stored twice. Including the machine that runs the `ingest` run itself."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from gent_disagreement_rag.storage import episodes as episode_store
from tests.support.fakeapi import EMBEDDINGS, LISTEN
from tests.support.fleet import SECOND, SERVER, Fleet, running_fleet, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(pg_server, tmp_path_factory.mktemp("faults")) as fleet:
        yield fleet


@pytest.fixture
def restart(fleet: Fleet) -> Iterator[list[str]]:
    """Machines a test killed, started again after it (the next test needs both)."""
    killed: list[str] = []
    yield killed
    for name in killed:
        fleet.start_machine(name)
    wait_until(lambda: fleet.dask_workers() == {SERVER, SECOND}, "both machines back in the cluster")


def _bystander(fleet: Fleet, run_id: str) -> str:
    """A machine that does not run the `ingest` run itself (whose death costs only its episodes)."""
    parent = wait_until(lambda: fleet.machine_of_run(run_id), "a machine to run the ingest run")
    return SECOND if parent == SERVER else SERVER


def _open_attempts(fleet: Fleet, run_id: str, machine: str, *, started: bool) -> list[str]:
    """Episodes the machine is on in this run (with their episode_pipeline run started, if `started`)."""
    return [a.episode_id for a in fleet.attempts(run_id)
            if a.worker.endswith(machine) and a.died and (a.flow_run_id is not None or not started)]


def _assert_night_done(fleet: Fleet, run_id: str, ids: list[str], survivor: str | None = None) -> None:
    run = fleet.wait_for_run(run_id)
    assert run.state.is_completed(), run.state
    rows = fleet.rows()
    assert {e: rows[e].status for e in ids} == {e: "processed" for e in ids}
    if survivor is not None:
        assert {rows[e].processed_by.rsplit("/", 1)[1] for e in ids} <= {SERVER, SECOND}
    assert fleet.duplicate_segments() == []


def test_a_machine_killed_while_its_episodes_wait_to_start_hands_them_to_the_other(fleet: Fleet, restart) -> None:
    ids = [f"W-{i}" for i in range(4)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (0.5, 0.0)
    url = fleet.settings.external_database_url()
    claims = [episode_store.wait_for_claim(url, e) for e in ids]  # another run has them: each taker must wait
    try:
        run_id = fleet.start_run()
        victim = _bystander(fleet, run_id)
        with psycopg.connect(url, autocommit=True) as conn:  # all four handed out, none started
            wait_until(lambda: conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                            ).fetchone()[0] == 4, "both machines to take two episodes each")
        fleet.kill_machine(victim)
        restart.append(victim)
    finally:
        for claim in claims:
            claim.close()

    _assert_night_done(fleet, run_id, ids)
    survivor = SERVER if victim == SECOND else SECOND
    assert {fleet.rows()[e].processed_by.rsplit("/", 1)[1] for e in ids} == {survivor}
    assert fleet.listen_counts(ids) == {e: 1 for e in ids}


def test_a_machine_killed_in_its_episodes_first_seconds_costs_only_the_transcriptions_in_flight(
        fleet: Fleet, restart) -> None:
    ids = [f"R-{i}" for i in range(4)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (20.0, 0.0)
    run_id = fleet.start_run()
    victim = _bystander(fleet, run_id)
    lost = wait_until(lambda: _open_attempts(fleet, run_id, victim, started=True), "the victim to start an episode",
                      every=0.1)
    fleet.kill_machine(victim)
    restart.append(victim)
    fleet.api.deepgram_latency = (0.5, 0.0)

    _assert_night_done(fleet, run_id, ids)
    counts = fleet.listen_counts(ids)
    assert all(counts[e] == 1 for e in ids if e not in lost) and all(counts[e] <= 2 for e in lost), counts
    summary = _summary(fleet, run_id)
    for episode_id in lost:  # the summary names the machine that died under it, then the one that finished it
        assert f"{victim} (died)" in summary[episode_id]["workers"], summary[episode_id]


def test_a_machine_killed_after_a_transcription_leaves_it_cached_for_the_other(fleet: Fleet, restart) -> None:
    ids = [f"T-{i}" for i in range(4)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (0.5, 0.0)
    fleet.api.openai_latency = 20.0
    try:
        run_id = fleet.start_run()
        victim = _bystander(fleet, run_id)

        def embedding_on_victim() -> list[str]:
            mine = _open_attempts(fleet, run_id, victim, started=True)
            in_flight = {e for e in ids for r in fleet.api.requests_to(EMBEDDINGS)
                         if r.ended is None and f"Episode {e} opens here.".encode() in r.body}
            return [e for e in mine if e in in_flight]

        lost = wait_until(embedding_on_victim, "the victim to embed a transcribed episode", every=0.1)
        fleet.kill_machine(victim)
        restart.append(victim)
    finally:
        fleet.api.openai_latency = 0.0

    _assert_night_done(fleet, run_id, ids)
    assert fleet.listen_counts(ids) == {e: 1 for e in ids}  # the transcription came from the shared stage cache
    counts = fleet.embedding_counts(ids)
    assert all(counts[e] == 1 for e in ids if e not in lost) and all(counts[e] == 2 for e in lost), counts


def test_the_machine_running_the_ingest_run_killed_mid_run_and_the_night_still_ends_done(fleet: Fleet, restart) -> None:
    ids = [f"M-{i}" for i in range(6)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (6.0, 0.0)
    before = len(fleet.api.requests_to(LISTEN))
    run_id = fleet.start_run()
    victim = wait_until(lambda: fleet.machine_of_run(run_id), "a machine to run the ingest run")
    wait_until(lambda: len(fleet.api.requests_to(LISTEN)) >= before + 2, "the first transcriptions", every=0.1)
    fleet.kill_machine(victim)
    restart.append(victim)
    fleet.api.deepgram_latency = (0.5, 0.0)

    _assert_night_done(fleet, run_id, ids)  # the same run, resumed by the server's automation on the other machine
    assert fleet.run_state(run_id).run_count >= 2
    counts = fleet.listen_counts(ids)
    assert all(1 <= n <= 2 for n in counts.values()) and sum(counts.values()) <= len(ids) + 4, counts


def _summary(fleet: Fleet, run_id: str) -> dict[str, dict]:
    """The run's `ingest-summary` artifact, by episode."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    with fleet.client() as client:
        [artifact, *_] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    import json

    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return {row["episode"]: row for row in rows}
