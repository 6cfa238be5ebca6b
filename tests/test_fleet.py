"""One deployment run spread over two workers, as on two machines: each worker has its own GDR_HOME and
only PREFECT_API_URL in its environment; the database, keys, settings and stage cache come from the server
(`gdr server publish`). A real Prefect server on Postgres, real process workers, the fake providers."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.conftest import REPO_ROOT
from tests.support.builders import app_environment, make_audio
from tests.support.fakeapi import (
    EMBEDDINGS,
    LISTEN,
    FakeAPI,
    deepgram_error,
    deepgram_response,
    filler_turns,
    for_audio,
    sha256_of,
)
from tests.support.prefect_server import prefect_server

BIN = Path(sys.executable).parent
TONES = itertools.count(300, 11)  # Hz


@dataclass
class Fleet:
    settings: Settings
    api: FakeAPI
    api_url: str
    homes: dict[str, Path]  # worker name -> its GDR_HOME

    def env(self, **extra: str) -> dict[str, str]:
        """A machine that knows only where the Prefect server is."""
        return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=env or self.env(), cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def worker_env(self, name: str) -> dict[str, str]:
        home = self.homes[name]
        return self.env(GDR_HOME=str(home), PREFECT_HOME=str(home / "prefect"), WORKER_NAME=name,
                        MAX_PARALLEL_EPISODES="2")

    def worker_pid(self, name: str) -> int:
        return int((self.homes[name] / "run" / "worker.pid").read_text())

    def rows(self) -> dict[str, episode_store.EpisodeRow]:
        with Database.from_settings(self.settings) as db:
            return {r.episode_id: r for r in episode_store.list_episodes(db)}

    def catalogue(self, ids: list[str], seconds: int = 12) -> None:
        entries = []
        for episode_id in ids:  # a tone no other episode of the module has: no audio (or its cache) is shared
            make_audio(self.settings.audio_dir / f"{episode_id}.mp3", seconds, next(TONES))
            entries.append({"episode_id": episode_id, "file_name": f"{episode_id}.mp3", "speakers_map": {"0": "Ann"}})
        self.settings.episodes_file.write_text(json.dumps(entries))

    def mark_transcripts(self, ids: list[str], seconds: int = 12) -> None:
        """Transcripts that open with a phrase naming their episode, so that its embeddings requests can be told
        apart (`embedding_counts`)."""
        for episode_id in ids:
            turns = [(0, f"Episode {episode_id} opens here."), *filler_turns(seconds, seed=episode_id)]
            self.api.add_audio(self.audio(episode_id), response=deepgram_response(turns, duration=seconds))

    def audio(self, episode_id: str) -> Path:
        return self.settings.audio_dir / f"{episode_id}.mp3"

    def embedding_counts(self, ids: list[str]) -> dict[str, int]:
        bodies = [r.body for r in self.api.requests_to(EMBEDDINGS)]
        return {e: sum(f"Episode {e} opens here.".encode() in body for body in bodies) for e in ids}

    def listen_counts(self, ids: list[str]) -> dict[str, int]:
        by_sha = Counter(sha256_of(r.body) for r in self.api.requests_to(LISTEN))
        return {e: by_sha[sha256_of(self.settings.audio_dir / f"{e}.mp3")] for e in ids}


@pytest.fixture(scope="module")
def fleet(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A Prefect server of its own (its blocks and variable must not reach other tests), the deployments,
    the published configuration of a world with 8 episodes' audio, and two workers."""
    import psycopg

    from gent_disagreement_rag.storage.schema import migrate

    tmp = tmp_path_factory.mktemp("fleet")
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute('CREATE DATABASE "fleet_app"')
    url = pg_server.replace("/postgres?", "/fleet_app?")
    migrate(url)
    with FakeAPI() as api, prefect_server(pg_server, "prefect_fleet") as api_url:
        settings = Settings(_env_file=None, database_url=url, gdr_home=tmp / "server-home", episodes_file=tmp / "episodes.json",
                            audio_dir=tmp / "audio", transcripts_dir=tmp / "transcripts", max_parallel_episodes=4)
        fleet = Fleet(settings, api, api_url, {name: tmp / name for name in ("w1", "w2")})
        publisher = fleet.env(**app_environment(settings, api), MAX_PARALLEL_EPISODES="4",
                              PREFECT_HOME=str(tmp / "server-home" / "prefect"))
        pool = fleet.run(str(BIN / "prefect"), "work-pool", "create", "default", "--type", "process")
        deploy = fleet.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all",
                           env=fleet.env(PREFECT_HOME=str(tmp / "server-home" / "prefect"), GDR_VERSION="test"))
        publish = fleet.run(str(BIN / "gdr"), "server", "publish", env=publisher)
        assert pool.returncode == 0 and deploy.returncode == 0, pool.stderr + deploy.stdout + deploy.stderr
        assert publish.returncode == 0 and "secret/gdr-deepgram-api-key" in publish.stdout, publish.stdout + publish.stderr
        for name in fleet.homes:
            started = fleet.run(str(BIN / "gdr"), "worker", "start", env=fleet.worker_env(name))
            assert started.returncode == 0, started.stdout + started.stderr
        try:
            yield fleet
        finally:
            for name in fleet.homes:
                fleet.run(str(BIN / "gdr"), "worker", "stop", env=fleet.worker_env(name))


def deployment_run(fleet: Fleet, *params: str) -> subprocess.CompletedProcess:
    return fleet.run(str(BIN / "prefect"), "deployment", "run", "ingest/default", *params, "--watch",
                     "--watch-timeout", "500")


def test_one_run_is_shared_by_two_workers_and_a_rerun_reuses_their_caches(fleet: Fleet) -> None:
    ids = [f"F-{i}" for i in range(8)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (3.0, 0.0)  # long enough for both workers to take episodes

    run = deployment_run(fleet)

    assert run.returncode == 0, run.stdout + run.stderr
    rows = fleet.rows()
    assert all(rows[e].status == "processed" and rows[e].segments > 0 for e in ids), {e: rows[e].status for e in ids}
    workers = {rows[e].processed_by.rsplit("/", 1)[1] for e in ids}
    assert workers == {"w1", "w2"}, [rows[e].processed_by for e in ids]
    assert fleet.listen_counts(ids) == {e: 1 for e in ids}  # none done twice

    # Every episode again, wherever it lands: each stage from the shared cache, no provider request.
    before = len(fleet.api.requests)
    rerun = deployment_run(fleet, "--param", "force=true")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert len(fleet.api.requests) == before


def _episode_processes(worker_pid: int) -> list[int]:
    """The flow-run processes a process worker started (its children)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == worker_pid:
            children.append(int(stat.parent.name))
    return children


def _running_ingest_run(fleet: Fleet) -> str | None:
    """The id of the `ingest` flow run in progress, as the server knows it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: fleet.api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest"])),
                                     flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Running"]))))
    return str(runs[0].id) if runs else None


def _runs_flow_run(pid: int, flow_run_id: str) -> bool:
    try:
        return f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def test_a_killed_worker_leaves_its_episodes_crashed_and_a_retry_completes_them_on_the_other(fleet: Fleet) -> None:
    ids = [f"K-{i}" for i in range(4)]
    fleet.catalogue(ids)
    fleet.api.deepgram_latency = (20.0, 0.0)
    run = subprocess.Popen([BIN / "prefect", "deployment", "run", "ingest/default", "--watch", "--watch-timeout", "500"],
                           env=fleet.env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    earlier = len(fleet.api.requests_to(LISTEN))
    deadline = time.monotonic() + 180
    while True:  # the victim: a worker running an episode but not the `ingest` run itself (it waits for the others)
        assert time.monotonic() < deadline and run.poll() is None, "no worker took an episode beside the ingest run"
        parent = _running_ingest_run(fleet)
        candidates = [name for name in fleet.homes if parent and _episode_processes(fleet.worker_pid(name))
                      and not any(_runs_flow_run(pid, parent) for pid in _episode_processes(fleet.worker_pid(name)))]
        if candidates and len(fleet.api.requests_to(LISTEN)) >= earlier + 2:
            break
        time.sleep(0.5)
    [victim_name] = candidates[:1]
    survivor = next(name for name in fleet.homes if name != victim_name)
    victim = fleet.worker_pid(victim_name)
    # The victim is shut down mid-episode: its episode runs get SIGTERM (which a run reports as Crashed), then the
    # worker is killed outright.
    episode_runs = _episode_processes(victim)
    for pid in episode_runs:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in episode_runs) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(victim, signal.SIGKILL)
    fleet.api.deepgram_latency = (0.5, 0.0)
    output, _ = run.communicate(timeout=600)
    assert run.returncode != 0, output
    rows = fleet.rows()
    crashed = [e for e in ids if rows[e].status == "failed"]
    assert crashed and all("Crashed" in (rows[e].last_error or "") for e in crashed), {e: rows[e].last_error for e in ids}

    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert flow_run_id, output
    retried = fleet.run(str(BIN / "prefect"), "flow-run", "retry", flow_run_id[1])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    deadline = time.monotonic() + 300
    while any(r.status != "processed" for r in (fleet.rows()[e] for e in ids)):
        assert time.monotonic() < deadline, {e: fleet.rows()[e].status for e in ids}
        time.sleep(1)
    rows = fleet.rows()
    assert {rows[e].processed_by.rsplit("/", 1)[1] for e in crashed} == {survivor}
    with Database.from_settings(fleet.settings) as db, db.connection() as conn:
        duplicates = conn.execute("SELECT episode_id, position FROM segments GROUP BY 1, 2 HAVING count(*) > 1").fetchall()
    assert duplicates == []


def _flow_run_id(output: str) -> str:
    found = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert found, output
    return found[1]


def _client(fleet: Fleet):
    """A Prefect client of the fleet's server, in this process."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: fleet.api_url}):
        return get_client(sync_client=True)


def _episode_runs(fleet: Fleet, episode_id: str) -> list:
    """The `episode_pipeline` flow runs of one episode, oldest first."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with _client(fleet) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["episode_pipeline"])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC)
    return [r for r in runs if r.parameters["job"]["episode_id"] == episode_id]


def _retry_and_wait(fleet: Fleet, flow_run_id: str):
    """`prefect flow-run retry`, then the run's next final state."""
    retried = fleet.run(str(BIN / "prefect"), "flow-run", "retry", flow_run_id)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    deadline = time.monotonic() + 300
    with _client(fleet) as client:
        while not (state := client.read_flow_run(flow_run_id).state).is_final():
            assert time.monotonic() < deadline, state
            time.sleep(1)
    return state


def _stage_runs(fleet: Fleet, flow_run_id: str) -> list[tuple[str, str]]:
    """(name, state type) of a flow run's task runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client(fleet) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [(r.name, r.state_type.value) for r in runs]


def _fail_one_transcription(fleet: Fleet, ids: list[str], failing: str) -> subprocess.CompletedProcess:
    """A deployment run of `ids` in which Deepgram rejects `failing`'s audio once with a 400."""
    fleet.catalogue(ids)
    fleet.mark_transcripts(ids)
    fleet.api.deepgram_latency = (0.5, 0.0)
    fleet.api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"),
                      when=for_audio(fleet.audio(failing)))
    return deployment_run(fleet)


def test_a_provider_failure_fails_only_its_episode_and_a_retry_of_the_run_reruns_only_it(fleet: Fleet) -> None:
    ids = [f"P-{i}" for i in range(4)]

    run = _fail_one_transcription(fleet, ids, "P-1")

    assert run.returncode != 0, run.stdout
    rows = fleet.rows()
    assert {e: rows[e].status for e in ids} == {"P-0": "processed", "P-1": "failed", "P-2": "processed", "P-3": "processed"}
    assert "corrupt or unsupported data" in rows["P-1"].last_error
    assert fleet.listen_counts(ids) == {e: 1 for e in ids}
    assert fleet.embedding_counts(ids) == {"P-0": 1, "P-1": 0, "P-2": 1, "P-3": 1}

    state = _retry_and_wait(fleet, _flow_run_id(run.stdout))

    assert state.is_completed(), state
    assert {e: r.status for e, r in fleet.rows().items() if e in ids} == {e: "processed" for e in ids}
    assert fleet.listen_counts(ids) == {"P-0": 1, "P-1": 2, "P-2": 1, "P-3": 1}
    assert fleet.embedding_counts(ids) == {e: 1 for e in ids}
    # The retry gave P-1 a run of its own, next to the failed one; the others kept their one run each.
    assert [r.state_type.value for r in _episode_runs(fleet, "P-1")] == ["FAILED", "COMPLETED"]
    assert all(len(_episode_runs(fleet, e)) == 1 for e in ids if e != "P-1")


def test_the_failed_episode_run_retried_on_its_own_completes_it_under_that_run(fleet: Fleet) -> None:
    ids = [f"Q-{i}" for i in range(3)]
    run = _fail_one_transcription(fleet, ids, "Q-1")
    assert run.returncode != 0, run.stdout
    [failed] = _episode_runs(fleet, "Q-1")
    assert failed.state_type.value == "FAILED"

    state = _retry_and_wait(fleet, str(failed.id))

    assert state.is_completed(), state
    assert {e: r.status for e, r in fleet.rows().items() if e in ids} == {e: "processed" for e in ids}
    assert fleet.listen_counts(ids) == {"Q-0": 1, "Q-1": 2, "Q-2": 1}
    assert fleet.embedding_counts(ids) == {e: 1 for e in ids}
    assert [r.id for r in _episode_runs(fleet, "Q-1")] == [failed.id]  # no new run: the same one finished it
    stages = _stage_runs(fleet, str(failed.id))
    assert sorted(name for name, state in stages if state == "COMPLETED") == [
        "embed-Q-1", "export-Q-1", "format-Q-1", "store-Q-1", "transcribe-Q-1"]
    assert sorted(name for name, state in stages if state != "COMPLETED") == ["transcribe-Q-1"]  # the 400
    for episode_id in ids:  # every episode's stages are in its own run, none in another's
        [own] = _episode_runs(fleet, episode_id)
        names = [name for name, _ in _stage_runs(fleet, str(own.id))]
        assert names and all(name.endswith(f"-{episode_id}") for name in names), names
