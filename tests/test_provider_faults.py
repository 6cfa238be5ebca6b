"""Provider faults during a run: transient ones are retried boundedly and every episode ends processed,
permanent ones fail their episode once with a clear reason, a bad key or no credit stops the run after one request.

Everything is real: Prefect runs on the session's API server, Postgres, and the Deepgram/OpenAI SDKs talking HTTP
to tests/support/fakeapi.py, which injects the faults. Nothing of ours is mocked.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.fakeapi import (
    EMBEDDINGS,
    LISTEN,
    OPENAI_KEY,
    containing,
    deepgram_error,
    dropped,
    for_audio,
    openai_error,
    slow,
)
from tests.support.world import World, run_flow, script_transcript

# --- transient API faults -----------------------------------------------------------------------


def test_transient_faults_are_retried_boundedly_and_every_episode_ends_processed(world: World, monkeypatch) -> None:
    monkeypatch.setenv("DEEPGRAM_TIMEOUT", "2")  # 2 s + 0.5 s per audio second: 3 s for these 2 s clips
    monkeypatch.setenv("OPENAI_TIMEOUT", "2")
    ids = world.catalogue([f"T-{i}" for i in range(6)])
    for e in ids:
        script_transcript(world, e, f"marker{e[-1]}x")
    api, audio = world.api, world.audio
    api.enqueue(LISTEN, deepgram_error(429, "TOO_MANY_REQUESTS", retry_after=2),
                deepgram_error(503, "SERVICE_UNAVAILABLE"), deepgram_error(500, "INTERNAL_SERVER_ERROR"),
                when=for_audio(audio("T-0")))
    api.enqueue(LISTEN, slow(6), dropped(), when=for_audio(audio("T-1")))
    api.enqueue(EMBEDDINGS, openai_error(429, "rate_limit_exceeded", type="tokens", retry_after_ms=1500),
                openai_error(500, None, type="server_error"), openai_error(503, None, type="server_error"),
                when=containing("marker2x"))
    api.enqueue(LISTEN, deepgram_error(502, "BAD_GATEWAY"), when=for_audio(audio("T-3")))
    api.enqueue(EMBEDDINGS, slow(5), dropped(), when=containing("marker3x"))
    api.enqueue(LISTEN, *[deepgram_error(503, "SERVICE_UNAVAILABLE")] * 6, when=for_audio(audio("T-4")))

    state = run_flow(max_parallel=6)

    assert state.is_failed() and "5/6 episodes processed" in state.message, state.message
    rows = world.rows()
    assert {e: r.status for e, r in rows.items()} == {**{e: "processed" for e in ids}, "T-4": "failed"}
    assert rows["T-4"].last_error == "TransientProviderError: Deepgram answered HTTP 503 (SERVICE_UNAVAILABLE)"
    # Every fault cost exactly one more request; T-4 stopped after 1 + RETRIES attempts.
    assert world.listen_counts() == {"T-0": 4, "T-1": 3, "T-2": 1, "T-3": 2, "T-4": 5, "T-5": 1}
    embeds = Counter(next(f"T-{i}" for i in range(6) if f"marker{i}x".encode() in r.body)
                     for r in api.requests_to(EMBEDDINGS))
    assert embeds == {"T-0": 1, "T-1": 1, "T-2": 4, "T-3": 3, "T-5": 1}
    # Retry-After (Deepgram, seconds) and retry-after-ms (OpenAI) were waited out.
    t0 = [r for r in api.requests_to(LISTEN) if r.body == audio("T-0").read_bytes()]
    assert t0[1].started - t0[0].ended >= 2.0
    t2 = [r for r in api.requests_to(EMBEDDINGS) if b"marker2x" in r.body]
    assert t2[1].started - t2[0].ended >= 1.5
    # Only calls that succeeded are in the cost ledger: one transcription and one embedding per processed episode.
    assert world.ledger("transcribe") == {e: 1 for e in ids if e != "T-4"}
    assert world.ledger("embed") == {e: 1 for e in ids if e != "T-4"}
    world.assert_consistent()


# --- permanent API faults -----------------------------------------------------------------------


def test_permanent_faults_fail_the_episode_once_with_a_clear_reason(world: World) -> None:
    ids = world.catalogue(["P-0", "P-1", "P-2"])
    script_transcript(world, "P-1", "markerp1x")
    world.api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"),
                      when=for_audio(world.audio("P-0")))
    world.api.enqueue(EMBEDDINGS, openai_error(400, "invalid_request", message="bad input"), when=containing("markerp1x"))

    state = run_flow(max_parallel=3)

    assert state.is_failed() and "1/3 episodes processed" in state.message, state.message
    rows = world.rows()
    assert rows["P-0"].status == "failed"
    assert rows["P-0"].last_error == (
        "PermanentProviderError: Deepgram answered HTTP 400 (Bad Request): corrupt or unsupported data")
    assert rows["P-1"].status == "failed"
    assert rows["P-1"].last_error == "PermanentProviderError: OpenAI embeddings answered HTTP 400 (invalid_request)"
    assert rows["P-2"].status == "processed"
    assert world.listen_counts() == {e: 1 for e in ids}  # no retry of a 400
    assert len(world.api.requests_to(EMBEDDINGS)) == 2  # P-1's one failed request, P-2's
    world.assert_consistent()


@pytest.mark.parametrize(
    ("path", "reply", "reason"),
    [
        (LISTEN, deepgram_error(401, "INVALID_AUTH", "Invalid credentials."),
         "AuthenticationError: Deepgram answered HTTP 401 (INVALID_AUTH): check DEEPGRAM_API_KEY"),
        (LISTEN, deepgram_error(402, "ASR_PAYMENT_REQUIRED", "Project does not have enough credits"),
         "QuotaExhaustedError: Deepgram answered HTTP 402 (ASR_PAYMENT_REQUIRED): the Deepgram project is out of credit"),
        (EMBEDDINGS, openai_error(401, "invalid_api_key", message=f"Incorrect API key provided: {OPENAI_KEY}"),
         "AuthenticationError: OpenAI embeddings answered HTTP 401 (invalid_api_key): check OPENAI_API_KEY"),
        (EMBEDDINGS, openai_error(429, "insufficient_quota", type="insufficient_quota"),
         "QuotaExhaustedError: OpenAI embeddings answered HTTP 429 (insufficient_quota): "
         "the OpenAI account is out of credit"),
    ],
    ids=["deepgram-401", "deepgram-402", "openai-401", "openai-insufficient-quota"],
)
def test_a_bad_key_or_no_credit_stops_the_run_after_one_request(world: World, path, reply, reason) -> None:
    ids = world.catalogue(["K-0", "K-1", "K-2", "K-3"])
    world.api.enqueue(path, reply)

    state = run_flow(max_parallel=1)

    assert state.is_failed()
    assert len(world.api.requests_to(path)) == 1  # not one per episode
    assert len(world.api.requests_to(LISTEN)) == 1
    rows = world.rows()
    assert rows["K-0"].status == "failed" and rows["K-0"].last_error == reason
    assert {e: rows[e].status for e in ids[1:]} == {e: "pending" for e in ids[1:]}  # never started, not "failed"
    assert reason in state.message, state.message
    world.assert_consistent()
