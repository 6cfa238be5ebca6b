"""Two machines share one run's episodes at default settings, as README's scaling section sets them up (real
Prefect server and workers, a real Dask scheduler and workers, each machine its own GDR_HOME and only
PREFECT_API_URL): capacity adds up, Deepgram's cap holds across the fleet, a one-slot machine completes a run,
and a retried run files every episode's work under that episode."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from gent_disagreement_rag.storage.attempts import AttemptOutcome
from tests.support.fakeapi import LISTEN, deepgram_error, for_audio
from tests.support.fleet import BIN, REPO_ROOT, SECOND, SERVER, Fleet, running_fleet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(pg_server, tmp_path_factory.mktemp("fleet")) as fleet:
        yield fleet


def test_both_machines_take_episodes_and_deepgrams_cap_holds_across_them(fleet: Fleet) -> None:
    ids = [f"F-{i}" for i in range(8)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (3.0, 0.0)

    run = fleet.wait_for_run(fleet.start_run())

    assert run.state.is_completed(), run.state
    rows = fleet.rows()
    assert {e: rows[e].status for e in ids} == {e: "processed" for e in ids}
    assert {rows[e].processed_by.rsplit("/", 1)[1] for e in ids} == {SERVER, SECOND}
    assert fleet.listen_counts(ids) == {e: 1 for e in ids}  # none done twice
    # 2 + 2 episode slots want 4 transcriptions at once; the fleet-wide limit lets 3 through, never more.
    assert fleet.api.peak_concurrency(LISTEN) == 3
    attempts = fleet.attempts(str(run.id))
    assert sorted(a.episode_id for a in attempts) == ids and {a.outcome for a in attempts} == {AttemptOutcome.PROCESSED}

    # Every episode again, wherever it lands: each stage from the shared cache, no provider request.
    before = len(fleet.api.requests)
    again = fleet.wait_for_run(fleet.start_run(force=True))
    assert again.state.is_completed(), again.state
    assert len(fleet.api.requests) == before


def test_a_machine_with_one_slot_completes_a_run_on_its_own(fleet: Fleet) -> None:
    ids = [f"S-{i}" for i in range(3)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (0.5, 0.0)
    stopped = fleet.gdr("worker", "stop", env=fleet.machine_env(SECOND))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    fleet.gdr("worker", "stop", env=fleet.machine_env(SERVER))
    fleet.start_machine(SERVER, slots=1)
    try:
        run = fleet.wait_for_run(fleet.start_run())

        assert run.state.is_completed(), run.state
        assert fleet.statuses(ids) == {e: "processed" for e in ids}
        assert {fleet.rows()[e].processed_by.rsplit("/", 1)[1] for e in ids} == {SERVER}
    finally:
        fleet.gdr("worker", "stop", env=fleet.machine_env(SERVER))
        fleet.start_machine(SERVER)
        fleet.start_machine(SECOND)


def test_a_retried_run_files_each_episodes_new_work_under_that_episode(fleet: Fleet) -> None:
    ids = [f"P-{i}" for i in range(4)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (0.5, 0.0)
    fleet.api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"),
                      when=for_audio(fleet.audio("P-1")))
    run_id = fleet.start_run()
    first = fleet.wait_for_run(run_id)
    assert first.state.is_failed() and "P-1" in first.state.message, first.state
    assert fleet.statuses(ids) == {"P-0": "processed", "P-1": "failed", "P-2": "processed", "P-3": "processed"}
    # In the UI the failed episode's node is red, with its reason; the others green.
    tasks = _episode_tasks(fleet, run_id)
    assert {name: state for name, (state, _) in tasks.items()} == {
        "episode-P-0": "COMPLETED", "episode-P-1": "FAILED", "episode-P-2": "COMPLETED", "episode-P-3": "COMPLETED"}
    assert "corrupt or unsupported data" in tasks["episode-P-1"][1]

    retried = subprocess.run([str(BIN / "prefect"), "flow-run", "retry", run_id], env=fleet.env(), cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)  # what the UI's Retry does
    assert retried.returncode == 0, retried.stdout + retried.stderr
    second = fleet.wait_for_run(run_id)

    assert second.state.is_completed(), second.state
    assert fleet.statuses(ids) == {e: "processed" for e in ids}
    assert fleet.listen_counts(ids) == {"P-0": 1, "P-1": 2, "P-2": 1, "P-3": 1}
    assert fleet.embedding_counts(ids) == {e: 1 for e in ids}
    # Every episode_pipeline run of this parent hangs under the `episode` task run of its own episode.
    for episode_id, parent_task in _episode_runs_and_their_episode_task(fleet, run_id):
        assert parent_task == f"episode-{episode_id}", (episode_id, parent_task)
    assert [name for name, _ in _episode_runs_and_their_episode_task(fleet, run_id)].count("P-1") == 2


def _episode_runs_and_their_episode_task(fleet: Fleet, run_id: str) -> list[tuple[str, str]]:
    """(episode, name of the `episode` task run it is drawn under) for each `episode_pipeline` run of a run."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterParentFlowRunId

    found = []
    with fleet.client() as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["episode_pipeline"])),
                                     flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(
                                         any_=[run_id])))
        for run in runs:
            link = client.read_task_run(run.parent_task_run_id)
            [parent] = [i for i in link.task_inputs.get("__parents__", [])]
            found.append((run.parameters["episode_id"], client.read_task_run(parent.id).name))
    assert found
    return found


def _episode_tasks(fleet: Fleet, run_id: str) -> dict[str, tuple[str, str]]:
    """The run's `episode` task runs as the UI draws them: name -> (state type, state message)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with fleet.client() as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {r.name: (r.state_type.value, r.state.message or "") for r in runs if r.name.startswith("episode-")}
