"""The Prefect flows end to end: real Prefect runs (test harness), real Postgres, real SDKs over HTTP."""

from __future__ import annotations

import hashlib
import threading
import time

import psycopg
import pytest

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import run_ingest, tone_catalogue
from tests.support.fakeapi import EMBEDDINGS, LISTEN, FakeAPI, deepgram_error, for_audio, sha256_of
from tests.support.waiting import wait_for
from tests.support.world import statuses


def run_log(state) -> list[str]:
    """The ERROR lines the flow run of `state` sent to the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                       level=LogFilterLevel(ge_=40))
    with get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(log_filter=wanted)]


@pytest.fixture
def catalogue(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, prefect_api) -> list[str]:
    """Six episodes with distinct audio, and the environment pointing every setting at the test's world."""
    return tone_catalogue(settings, fake_api, monkeypatch, {f"EP-{i}": (20 + i, 300 + 40 * i) for i in range(6)},
                          {"0": "Ann", "1": "Bob"})


def test_six_episodes_three_at_a_time_then_a_rerun_costs_nothing(settings, catalogue, fake_api) -> None:
    fake_api.deepgram_latency = (1.0, 0.0)  # long enough for episodes to overlap
    state = run_ingest(max_parallel=3)
    assert state.is_completed(), state.message
    assert fake_api.peak_concurrency(LISTEN) == 3
    assert len(fake_api.requests_to(LISTEN)) == 6
    assert len(fake_api.requests_to(EMBEDDINGS)) == 6  # one batched request per episode
    assert all(status == "processed" and segments > 0 for status, segments, _ in statuses(settings).values())
    exports = sorted(p.name for p in settings.transcripts_dir.iterdir())
    assert {f"EP-0{suffix}" for suffix in (".raw.json", ".chunks.json", ".md", ".srt", ".vtt")} <= set(exports)

    requests_before = len(fake_api.requests)
    assert run_ingest().is_completed()  # nothing new, failed or changed: nothing to do
    assert run_ingest(force=True).is_completed()  # every episode again: every stage from cache
    assert len(fake_api.requests) == requests_before


def test_the_longest_episodes_start_first(settings, catalogue, fake_api) -> None:
    """Longest first (by audio size) so that parallel workers finish together; catalogue order breaks ties."""
    assert run_ingest(max_parallel=1).is_completed()
    started = [hashlib.sha256(r.body).hexdigest() for r in fake_api.requests_to(LISTEN)]
    by_size = sorted(catalogue, key=lambda e: (settings.audio_dir / f"{e}.mp3").stat().st_size, reverse=True)
    assert started == [sha256_of(settings.audio_dir / f"{e}.mp3") for e in by_size]
    assert by_size[0] == "EP-5"  # the 25-second file, last in the catalogue


def test_one_bad_episode_fails_alone_and_the_run_is_failed(settings, catalogue, fake_api) -> None:
    bad = settings.audio_dir / "EP-3.mp3"
    fake_api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"), when=for_audio(bad))
    state = run_ingest(episode_ids=["EP-3", "EP-4"], max_parallel=1)
    assert state.is_failed()
    # One line (the UI shows a newline as a literal \n): the verdict, then the failed episode with its reason.
    assert state.message.startswith("1/2 episodes processed; 1 failed or skipped — EP-3: "), state.message
    assert "corrupt or unsupported data" in state.message and "\n" not in state.message
    # And in the run's log, where `prefect deployment run --watch` shows it before "finished in state 'Failed'".
    assert state.message in wait_for(lambda: [line for line in run_log(state) if "EP-3: " in line],
                                     what="the run's failure in its log")
    result = statuses(settings)
    assert result["EP-3"][0] == "failed" and "corrupt or unsupported data" in result["EP-3"][2]
    assert result["EP-4"][0] == "processed"
    assert len(fake_api.requests_to(LISTEN)) == 2  # the 400 was not retried
    # The next default run picks up the failed episode and the never-run ones, not the processed one.
    assert run_ingest().is_completed()
    assert {status for status, _, _ in statuses(settings).values()} == {"processed"}
    transcribed = [hashlib.sha256(r.body).hexdigest() for r in fake_api.requests_to(LISTEN)]
    assert transcribed.count(sha256_of(settings.audio_dir / "EP-4.mp3")) == 1
    assert transcribed.count(sha256_of(bad)) == 2


def test_transient_429_is_retried_and_succeeds(settings, catalogue, fake_api) -> None:
    fake_api.enqueue(LISTEN, deepgram_error(429, "TOO_MANY_REQUESTS", retry_after=3))
    fake_api.enqueue(LISTEN, deepgram_error(503, "SERVICE_UNAVAILABLE"))
    state = run_ingest(episode_ids=["EP-0"])
    assert state.is_completed(), state.message
    listen = fake_api.requests_to(LISTEN)
    assert [r.status for r in listen] == [429, 503, 200]
    assert listen[1].started - listen[0].ended >= 2.9  # Retry-After honoured (the first delay is <= 1.5 s)


def test_changing_the_embedding_model_re_embeds_without_transcribing(settings, catalogue, fake_api, monkeypatch) -> None:
    assert run_ingest(episode_ids=["EP-1"]).is_completed()
    listen, embeds = len(fake_api.requests_to(LISTEN)), len(fake_api.requests_to(EMBEDDINGS))
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "512")
    assert run_ingest(episode_ids=["EP-1"]).is_completed()
    assert len(fake_api.requests_to(LISTEN)) == listen
    assert len(fake_api.requests_to(EMBEDDINGS)) == embeds + 1
    assert fake_api.requests_to(EMBEDDINGS)[-1].json["dimensions"] == 512
    with Database.from_settings(settings) as db:
        models = {m: n for m, _, n in segment_store.embedding_model_counts(db)}
    assert set(models) == {"openai/text-embedding-3-small@1536", "openai/text-embedding-3-small@512"}
    assert models["openai/text-embedding-3-small@1536"] == models["openai/text-embedding-3-small@512"] > 0


def test_changing_the_chunker_re_chunks_without_transcribing(settings, catalogue, fake_api, monkeypatch) -> None:
    assert run_ingest(episode_ids=["EP-2"]).is_completed()
    before = statuses(settings)["EP-2"][1]
    monkeypatch.setenv("CHUNK_MAX_TOKENS", "40")
    assert run_ingest(episode_ids=["EP-2"]).is_completed()
    assert statuses(settings)["EP-2"][1] > before
    assert len(fake_api.requests_to(LISTEN)) == 1


def _hold_claim_until_waited_on(settings, episode_id: str, *, process_it: bool) -> threading.Thread:
    """Another run's claim on `episode_id` (as a run whose parent died would still hold it on a worker): held
    until this process's run waits for it, then released, with the episode processed or not."""
    url = settings.external_database_url()
    held = threading.Event()

    def other_run() -> None:
        claim = episode_store.wait_for_claim(url, episode_id)
        held.set()
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                deadline = time.monotonic() + 300
                while not conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                       ).fetchone()[0]:
                    assert time.monotonic() < deadline, "no run waited for the claim"
                    time.sleep(0.2)
                if process_it:
                    conn.execute("UPDATE episodes SET status = 'processed', processed_at = clock_timestamp() "
                                 "WHERE episode_id = %s", (episode_id,))
        finally:
            claim.close()

    thread = threading.Thread(target=other_run, daemon=True)
    thread.start()
    assert held.wait(60)
    return thread


def test_an_episode_another_run_finishes_while_this_one_waits_is_left_to_it(settings, catalogue, fake_api) -> None:
    run_ingest(episode_ids=["EP-1"])  # registers the catalogue (the other run's episode row exists)
    other = _hold_claim_until_waited_on(settings, "EP-0", process_it=True)

    state = run_ingest(episode_ids=["EP-0"])

    other.join(60)
    assert state.is_completed() and "1 by another run" in state.message, state.message
    assert statuses(settings)["EP-0"][0] == "processed"
    assert len(fake_api.requests_to(LISTEN)) == 1  # EP-1's: EP-0 was not transcribed by this run


def test_an_episode_whose_other_run_died_is_processed_by_the_run_waiting_for_it(settings, catalogue, fake_api) -> None:
    other = _hold_claim_until_waited_on(settings, "EP-0", process_it=False)

    state = run_ingest(episode_ids=["EP-0"])

    other.join(60)
    assert state.is_completed() and "1/1 episodes processed" in state.message, state.message
    assert statuses(settings)["EP-0"][0] == "processed"
    assert len(fake_api.requests_to(LISTEN)) == 1
