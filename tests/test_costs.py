"""What a run costs: list-price estimates, the cost ledger's audio seconds and tokens (oracles from ffmpeg and
tiktoken), `gdr costs` at configured prices and the `ingest-summary` artifact of a real run."""

from __future__ import annotations

import json

import psycopg
import pytest

from gent_disagreement_rag.providers.pricing import deepgram_cost, openai_cost
from gent_disagreement_rag.providers.registry import provider_registry
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.costs import CostTotals
from tests.support.builders import (
    cl100k_count,
    decoded_seconds,
    run_ingest,
    tone_catalogue,
)
from tests.support.fakeapi import (
    EMBEDDINGS,
    LISTEN,
    FakeAPI,
    deepgram_error,
    for_audio,
)
from tests.support.world import stored_texts


def test_the_cost_ledger_records_the_audio_seconds_and_tokens_paid_for(settings, one_episode, fake_api) -> None:
    assert run_ingest().is_completed()

    seconds = decoded_seconds(one_episode)
    [embed_request] = fake_api.requests_to(EMBEDDINGS)
    tokens = sum(cl100k_count(text) for text in embed_request.json["input"])
    with psycopg.connect(settings.external_database_url()) as conn:
        rows = conn.execute("SELECT stage, provider, requests, audio_seconds, tokens, cost_usd FROM provider_calls "
                            "ORDER BY stage").fetchall()
    [(s1, p1, r1, a1, t1, c1), (s2, p2, r2, a2, t2, c2)] = rows
    assert (s1, p1, r1, t1, a1) == ("embed", "openai", 1, tokens, 0)
    assert (s2, p2, r2, t2) == ("transcribe", "deepgram", 1, 0)
    assert float(a2) == pytest.approx(seconds, abs=1e-6)
    # (the ledger keeps dollars to 6 decimals)
    assert float(c2) == pytest.approx(seconds / 60 * 0.0043, abs=5e-7)
    assert float(c1) == pytest.approx(tokens / 1e6 * 0.02, abs=5e-7)


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


@pytest.mark.fast
def test_each_provider_costs_its_configured_list_price() -> None:
    s = Settings(_env_file=None, deepgram_price_per_minute=0.5, openai_price_per_million_tokens=2.0)
    providers = provider_registry(s)
    assert providers.cost("deepgram", audio_seconds=90.0, tokens=1_000) == 0.75  # 1.5 minutes at 0.5; tokens are free
    assert providers.cost("openai", audio_seconds=90.0, tokens=250_000) == 0.5  # a quarter of a million tokens at 2.0
    assert providers.cost("local", audio_seconds=3600.0, tokens=10**6) == 0.0
    assert deepgram_cost(s, 60.0) == 0.5 and openai_cost(s, 10**6) == 2.0


@pytest.mark.fast
def test_cost_totals_json_shows_minutes_and_rounded_dollars() -> None:
    totals = CostTotals(requests=3, audio_seconds=100.0, tokens=1_200, cost_usd=0.0012345678, saved_usd=0.00432109,
                        publisher_transcripts=2)
    assert totals.as_json() == {"requests": 3, "audio_minutes": 1.67, "tokens": 1_200, "cost_usd": 0.001235,
                                "saved_usd": 0.004321, "publisher_transcripts": 2}
