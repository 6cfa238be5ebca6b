"""What readers of the store see while episodes are processed again, and what a run leaves behind: a failed
reprocess keeps the old version searchable, a reader during a replace sees one whole version, the quality gate's
override, the cost ledger and the `ingest-summary` artifact of a real run (issue 18, "never tested").

Real parts throughout: Postgres, Prefect runs on the session's test server, the Deepgram/OpenAI SDKs against
tests/support/fakeapi.py. Oracles are computed here: tokens with tiktoken, audio length by decoding with ffmpeg.
"""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.search import search
from gent_disagreement_rag.search.engine import Searcher
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import CatalogueEntry
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import cl100k_count, make_audio, run_ingest, segment, tone_catalogue
from tests.support.fakeapi import (
    EMBEDDINGS,
    LISTEN,
    FakeAPI,
    deepgram_error,
    deepgram_response,
    for_audio,
)
from tests.test_regressions import decoded_seconds
from tests.test_reliability import Chaos, wait_for

LOCAL_MODEL = "local/all-MiniLM-L6-v2@384"


def stored_texts(settings: Settings, episode_id: str) -> list[str]:
    with psycopg.connect(settings.external_database_url()) as conn:
        return [t for (t,) in conn.execute("SELECT text FROM segments WHERE episode_id = %s ORDER BY position",
                                           (episode_id,))]


def truncated_transcript(text: str, words_until: float, duration: float) -> dict:
    """A Deepgram answer whose words stop at `words_until` of a `duration`-second recording (the quality gate
    wants 80 % coverage of a recording over a minute long; the tone uploaded can be shorter: the fake
    answers what it is told)."""
    response = deepgram_response([(0, text), (1, text)], duration=words_until)
    response["metadata"]["duration"] = duration
    return response


# --- a failed reprocess keeps the old version searchable --------------------------------------------------


@pytest.mark.parametrize("failure", ["deepgram-400", "quality-gate"])
def test_a_failed_reprocess_keeps_the_old_version_searchable(settings, fake_api: FakeAPI, monkeypatch, prefect_api,
                                                              failure: str) -> None:
    [episode] = tone_catalogue(settings, fake_api, monkeypatch, {"C-0": (3, 440)})
    audio = settings.audio_dir / "C-0.mp3"
    fake_api.add_audio(audio, response=deepgram_response(
        [(0, "oldversion of the beekeeping talk " * 6), (1, "oldversion replies about hives " * 6)], duration=3.0))
    assert run_ingest().is_completed()
    old = stored_texts(settings, episode)
    assert len(old) >= 2 and all("oldversion" in t for t in old)

    make_audio(audio, 5, 880)  # a new edit of the episode; its processing fails
    if failure == "deepgram-400":
        fake_api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"), when=for_audio(audio))
    else:
        fake_api.add_audio(audio, response=truncated_transcript("newversion words " * 10, 50.0, 100.0))
    assert run_ingest().is_failed()

    with Database.from_settings(settings) as db:
        [row] = episode_store.list_episodes(db)
    assert row.status == "failed" and row.last_error.startswith(
        "PermanentProviderError: " if failure == "deepgram-400" else "QualityGateError: "), row.last_error
    assert stored_texts(settings, episode) == old
    for mode in ("vector", "text", "hybrid"):
        hits = search("oldversion", 50, episode=episode, mode=mode, settings=Settings(_env_file=None))
        assert sorted(h.text for h in hits) == sorted(old), mode


# --- a reader during a replace -------------------------------------------------------------------------------


def waiting_copies(url: str) -> int:
    """Sessions on the database blocked on a lock in their `COPY embeddings`."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'").fetchone()[0]


def test_a_reader_during_a_replace_sees_the_whole_old_or_the_whole_new_version(db: Database, settings) -> None:
    """The replace is held open at its embeddings COPY (its old rows deleted, the new segments copied, nothing
    committed) by a lock on the model's row; readers meanwhile, and all along, see one version entire."""
    embedder = LocalMiniLMEmbedder()
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id="R", file_name="R.mp3")])
    versions = {
        "old": [f"old take {i}: the honeybee colony clusters to keep warm" for i in range(5)],
        "new": [f"new take {i}: a varroa mite census by sugar roll" for i in range(8)],
    }

    def store(version: str) -> None:
        texts = versions[version]
        segs = [segment(i, "Host", i * 10.0, i * 10.0 + 9, t, 12) for i, t in enumerate(texts)]
        segment_store.store_episode(db, "R", segs, model_id=LOCAL_MODEL, provider="local", model="all-MiniLM-L6-v2",
                                    vectors=embedder.embed(texts).vectors)

    store("old")
    searcher = Searcher(settings, db)
    url = settings.external_database_url()

    def seen() -> dict[str, tuple[str, ...]]:
        """What a search and a plain read of the episode return now, each as the sorted texts."""
        hits = searcher.search("honeybee colony or varroa mite", 50, episode="R", mode="vector")
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT s.text, count(e.position) FROM segments s LEFT JOIN embeddings e "
                                "USING (episode_id, position) WHERE s.episode_id = 'R' GROUP BY s.text").fetchall()
        assert all(n == 1 for _, n in rows), rows  # every segment has its vector
        return {"search": tuple(sorted(h.text for h in hits)), "read": tuple(sorted(t for t, _ in rows))}

    whole = {tuple(sorted(texts)): version for version, texts in versions.items()}
    observations: list[dict[str, tuple[str, ...]]] = []
    done = threading.Event()

    def keep_reading() -> None:
        while not done.is_set():
            observations.append(seen())
        observations.append(seen())

    locker = psycopg.connect(url)
    locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (LOCAL_MODEL,))
    writer = Chaos(lambda: store("new"))
    reader = Chaos(keep_reading)
    try:
        wait_for(lambda: waiting_copies(url) == 1, what="the replace to be held at its COPY")
        during = seen()
        wait_for(lambda: len(observations) >= 3, what="the reader to read while the replace is held")
        held_reads = len(observations)
    finally:
        locker.rollback()
        locker.close()
    writer.join()
    done.set()
    reader.join()

    assert {whole.get(v) for v in during.values()} == {"old"}, during
    after = seen()
    assert {whole.get(v) for v in after.values()} == {"new"}, after
    assert held_reads >= 1 and len(observations) > held_reads
    assert {whole.get(v) for o in observations for v in o.values()} <= {"old", "new"}, [
        o for o in observations if {whole.get(v) for v in o.values()} - {"old", "new"}]


# --- SKIP_QUALITY_GATE ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [False, True], ids=["gate-on", "SKIP_QUALITY_GATE"])
def test_an_episode_failing_the_quality_gate_is_stored_only_with_skip_quality_gate(
        settings, fake_api: FakeAPI, monkeypatch, prefect_api, skip: bool) -> None:
    [episode] = tone_catalogue(settings, fake_api, monkeypatch, {"G-0": (3, 523)})
    # Words for the first 50 s of 100: coverage 0.5, under the gate's 0.8.
    fake_api.add_audio(settings.audio_dir / "G-0.mp3", response=truncated_transcript("cutoff words here " * 20, 50.0, 100.0))
    if skip:
        monkeypatch.setenv("SKIP_QUALITY_GATE", "true")

    state = run_ingest()

    with Database.from_settings(settings) as db:
        [row] = episode_store.list_episodes(db)
    texts = stored_texts(settings, episode)
    if skip:
        assert state.is_completed() and row.status == "processed", (state.message, row.last_error)
        assert texts and all("cutoff" in t for t in texts)
        assert len(fake_api.requests_to(EMBEDDINGS)) == 1
    else:
        assert state.is_failed() and row.status == "failed"
        assert row.last_error.startswith("QualityGateError: episode G-0: transcript failed the quality gate"), row.last_error
        assert texts == [] and fake_api.requests_to(EMBEDDINGS) == []


# --- the cost ledger and the ingest-summary artifact of a real run -----------------------------------------


PRICES = {"DEEPGRAM_PRICE_PER_MINUTE": "0.75", "OPENAI_PRICE_PER_MILLION_TOKENS": "130"}  # the test's own figures


@pytest.fixture
def priced_run(settings, fake_api: FakeAPI, monkeypatch, prefect_api):
    """A run of two episodes at the test's prices: L-0 is processed, L-1's audio is refused (HTTP 400).
    Returns (the run's final state, the audio seconds and embedded tokens L-0 paid for)."""
    tone_catalogue(settings, fake_api, monkeypatch, {"L-0": (7, 440), "L-1": (4, 660)})
    for name, value in PRICES.items():
        monkeypatch.setenv(name, value)
    fake_api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"),
                     when=for_audio(settings.audio_dir / "L-1.mp3"))
    state = run_ingest(max_parallel=1)
    assert state.is_failed()
    [embed_request] = fake_api.requests_to(EMBEDDINGS)
    return state, decoded_seconds(settings.audio_dir / "L-0.mp3"), sum(cl100k_count(t) for t in embed_request.json["input"])


def test_the_ledger_and_gdr_costs_hold_the_audio_seconds_tokens_and_dollars_at_the_configured_prices(
        settings, priced_run) -> None:
    from typer.testing import CliRunner

    from gent_disagreement_rag.cli import app

    _, seconds, tokens = priced_run
    audio_usd, token_usd = seconds / 60 * 0.75, tokens / 1e6 * 130
    with psycopg.connect(settings.external_database_url()) as conn:
        rows = conn.execute("SELECT episode_id, stage, provider, requests, audio_seconds::float8, tokens, "
                            "cost_usd::float8 FROM provider_calls ORDER BY stage").fetchall()
    assert [r[:4] + (r[5],) for r in rows] == [("L-0", "embed", "openai", 1, tokens), ("L-0", "transcribe", "deepgram", 1, 0)]
    [(*_, embed_seconds, _, embed_usd), (*_, transcribe_seconds, _, transcribe_usd)] = rows
    assert embed_seconds == 0 and transcribe_seconds == pytest.approx(seconds, abs=1e-6)
    assert (embed_usd, transcribe_usd) == (pytest.approx(token_usd, abs=5e-7), pytest.approx(audio_usd, abs=5e-7))

    result = CliRunner().invoke(app, ["costs", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["total"] == {"requests": 2, "audio_minutes": round(seconds / 60, 2), "tokens": tokens,
                               "cost_usd": pytest.approx(audio_usd + token_usd, abs=1e-6), "saved_usd": 0.0,
                               "publisher_transcripts": 0}
    assert [e["episode_id"] for e in report["episodes"]] == ["L-0"]  # the refused upload cost nothing


def test_the_ingest_summary_artifact_tells_each_episodes_outcome_and_cost(settings, priced_run) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    state, seconds, tokens = priced_run
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["ingest-summary"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert artifact.type == "table" and artifact.description == "2 episodes; 0 already up to date"
    rows = {row["episode"]: row for row in (json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data)}
    ok, refused = rows["L-0"], rows["L-1"]
    assert set(rows) == {"L-0", "L-1"}
    assert (ok["status"], ok["segments"], ok["error"]) == ("processed", len(stored_texts(settings, "L-0")), "")
    assert ok["segments"] >= 1 and ok["processed_by"].endswith("/local")
    assert ok["audio_minutes"] == round(seconds / 60, 2) and ok["tokens"] == tokens
    assert ok["cost_usd"] == pytest.approx(seconds / 60 * 0.75 + tokens / 1e6 * 130, abs=1e-6)
    assert ok["seconds"] > 0
    assert (refused["status"], refused["segments"], refused["tokens"], refused["cost_usd"]) == ("failed", 0, 0, 0)
    assert refused["error"] == "PermanentProviderError: Deepgram answered HTTP 400 (Bad Request): corrupt or unsupported data"
