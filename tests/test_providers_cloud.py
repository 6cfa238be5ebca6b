"""Deepgram and OpenAI adapters driven through the real SDKs against the local fake server."""

from __future__ import annotations

import email.utils
import time
import traceback
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gent_disagreement_rag.errors import (
    AuthenticationError,
    ConfigError,
    PermanentProviderError,
    ProviderError,
    QuotaExhaustedError,
    TransientProviderError,
)
from gent_disagreement_rag.providers.audio import audio_seconds
from gent_disagreement_rag.providers.embedders.openai import OpenAIEmbedder, pack
from gent_disagreement_rag.providers.http import retry_after_seconds
from gent_disagreement_rag.providers.transcribers.deepgram import DeepgramTranscriber
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.text.tokens import count_tokens, decode, encode
from tests.support.builders import cl100k_count
from tests.support.fakeapi import (
    DEEPGRAM_KEY,
    EMBEDDINGS,
    LISTEN,
    OPENAI_KEY,
    FakeAPI,
    Reply,
    deepgram_error,
    dropped,
    fake_embedding,
    load_fixture,
    openai_error,
    slow,
)

pytestmark = pytest.mark.fast  # no Postgres, no Prefect, no Whisper, no subprocess (TESTING.md)


def make_settings(api: FakeAPI, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(_env_file=None, gdr_home=tmp_path / "home", **api.settings_fields(), **overrides)


def assert_no_key(exc: BaseException) -> None:
    """Neither key in the error as printed, logged (its traceback) or stored (its attributes)."""
    shown = [str(exc), repr(exc), "".join(traceback.format_exception(exc)), repr(vars(exc))]
    for key in (DEEPGRAM_KEY, OPENAI_KEY):
        assert not [text for text in shown if key in text]


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    """Bytes that are not decodable audio: the fake answers them all the same."""
    path = tmp_path / "episode.mp3"
    path.write_bytes(bytes(range(256)) * 40)
    return path


@pytest.fixture
def transcriber(fake_api: FakeAPI) -> DeepgramTranscriber:
    return DeepgramTranscriber(DEEPGRAM_KEY, base_url=fake_api.url)


@pytest.fixture
def embedder(fake_api: FakeAPI) -> OpenAIEmbedder:
    return OpenAIEmbedder(OPENAI_KEY, base_url=fake_api.openai_url, dimensions=64)


# --- Deepgram ---------------------------------------------------------------------------------


def test_deepgram_request_shape(fake_api: FakeAPI, audio: Path, tmp_path: Path) -> None:
    result = DeepgramTranscriber.from_settings(make_settings(fake_api, tmp_path)).transcribe(audio)

    (request,) = fake_api.requests
    assert request.path == LISTEN
    assert request.query == {
        "diarize": "true",
        "language": "en",
        "model": "nova-3",
        "paragraphs": "true",
        "punctuate": "true",
        "smart_format": "true",
        "utterances": "true",
    }
    assert request.headers["authorization"] == f"Token {DEEPGRAM_KEY}"
    assert request.headers["content-type"] == "application/octet-stream"
    assert request.body == audio.read_bytes()
    assert result.transcript.provider == "deepgram" and result.transcript.words
    assert result.transcript.options["model"] == "nova-3"


@pytest.mark.parametrize(
    ("name", "n_words", "speakers"),
    [
        ("nasa_eva_170s_3spk_nova2_utterances.json", 226, {0, 1, 2}),
        ("phone_call_463s_2spk_nova3_utterances.json", 1303, {0, 1}),
        ("zh_podcast_1418s_4spk_base_diarized.json", 7761, {0, 1, 2, 3}),
    ],
)
def test_deepgram_real_fixtures(
    fake_api: FakeAPI, transcriber: DeepgramTranscriber, audio: Path, name: str, n_words: int, speakers: set[int]
) -> None:
    fixture = load_fixture(name)
    fake_api.add_audio(audio, response=fixture)

    result = transcriber.transcribe(audio)

    assert len(result.transcript.words) == n_words
    assert {w.speaker for w in result.transcript.words} == speakers
    assert result.transcript.duration == pytest.approx(fixture["metadata"]["duration"])
    assert result.raw == fixture  # the body exactly as the provider sent it


@pytest.mark.parametrize("body", [{"request_id": "5e2c-accepted"}, {}], ids=["accepted", "empty"])
def test_deepgram_2xx_without_transcript_is_permanent(
    fake_api: FakeAPI, transcriber: DeepgramTranscriber, audio: Path, body: dict
) -> None:
    fake_api.enqueue(LISTEN, Reply(status=200, body=body))
    with pytest.raises(PermanentProviderError, match="not a transcript"):
        transcriber.transcribe(audio)


@pytest.mark.parametrize(
    ("reply", "error", "status", "retry_after"),
    [
        # Each error quotes the key back (body and header): the key must still reach no error of ours.
        (deepgram_error(400, "Bad Request", "corrupt or unsupported data sent with key {key}", echo_key=True),
         PermanentProviderError, 400, None),
        (deepgram_error(401, "INVALID_AUTH", "Invalid credentials: {key}", echo_key=True), AuthenticationError, 401, None),
        (deepgram_error(402, "ASR_PAYMENT_REQUIRED", "Project of key {key}: balance is 0.", echo_key=True),
         QuotaExhaustedError, 402, None),
        (deepgram_error(429, "TOO_MANY_REQUESTS", "{key} is over its rate", retry_after=3, echo_key=True),
         TransientProviderError, 429, 3.0),
        (deepgram_error(503, "SERVICE_UNAVAILABLE", "unavailable for {key}", echo_key=True),
         TransientProviderError, 503, None),
        (dropped(), TransientProviderError, None, None),
    ],
    ids=["400", "401", "402", "429", "503", "dropped"],
)
def test_deepgram_errors_map_to_classes_without_sdk_retries(
    fake_api: FakeAPI,
    transcriber: DeepgramTranscriber,
    audio: Path,
    reply: Reply,
    error: type[ProviderError],
    status: int | None,
    retry_after: float | None,
) -> None:
    fake_api.enqueue(LISTEN, reply)
    with pytest.raises(error) as caught:
        transcriber.transcribe(audio)
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.retry_after) == (status, retry_after)
    assert len(fake_api.requests) == 1  # retries belong to the orchestration
    assert_no_key(caught.value)
    if status == 400:
        assert "corrupt or unsupported data sent with key ***" in str(caught.value)  # masked, the rest kept


def test_deepgram_slow_answer_times_out_as_transient(fake_api: FakeAPI, audio: Path) -> None:
    transcriber = DeepgramTranscriber(DEEPGRAM_KEY, base_url=fake_api.url, base_timeout=0.3)
    fake_api.enqueue(LISTEN, slow(3))
    with pytest.raises(TransientProviderError, match="did not answer"):
        transcriber.transcribe(audio)


def test_deepgram_concurrency_cap_is_shared(fake_api: FakeAPI, tmp_path: Path) -> None:
    settings = make_settings(fake_api, tmp_path, deepgram_max_concurrency=2)
    transcriber = DeepgramTranscriber.from_settings(settings)  # one per run: every episode of the run shares its cap
    fake_api.deepgram_latency = (0.15, 0.0)
    files = []
    for i in range(6):
        files.append(tmp_path / f"e{i}.mp3")
        files[-1].write_bytes(b"episode %d" % i)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(transcriber.transcribe, files))

    assert len(fake_api.requests) == 6
    assert fake_api.peak_concurrency(LISTEN) == 2


def test_deepgram_timeout_scales_with_audio_length(tmp_path: Path, transcriber: DeepgramTranscriber) -> None:
    path = tmp_path / "ten_seconds.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * 80_000)
    assert audio_seconds(path) == pytest.approx(10.0)
    assert transcriber.timeout_for(path) == pytest.approx(60.0 + 5.0)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "522", "retry-after": "1"}, 0.522),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds


def test_retry_after_as_http_date() -> None:
    in_30_s = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after_seconds({"Retry-After": in_30_s}) == pytest.approx(30, abs=1.5)


def test_missing_keys_are_config_errors(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, gdr_home=tmp_path)
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY"):
        DeepgramTranscriber.from_settings(settings)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIEmbedder.from_settings(settings)


# --- OpenAI -----------------------------------------------------------------------------------


def test_tokens_offline() -> None:
    assert encode("hello world") == [15339, 1917]
    assert decode(encode("Ricky Ghoshroy, 12:30")) == "Ricky Ghoshroy, 12:30"
    assert count_tokens("<|endoftext|>") > 1  # counted as text, as the API does


@pytest.mark.parametrize(
    ("overrides", "dimensions"),
    [({}, 1536), ({"embedding_dimensions": 256}, 256), ({"embedding_model": "text-embedding-ada-002"}, None)],
    ids=["3-small", "3-small@256", "ada-002"],
)
def test_openai_request_shape(fake_api: FakeAPI, tmp_path: Path, overrides: dict, dimensions: int | None) -> None:
    embedder = OpenAIEmbedder.from_settings(make_settings(fake_api, tmp_path, **overrides))
    batch = embedder.embed(["first text", "second text"])

    (request,) = fake_api.requests
    assert request.path == EMBEDDINGS
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert request.json["model"] == embedder.model
    assert request.json["input"] == ["first text", "second text"]
    assert request.json.get("dimensions") == dimensions
    assert request.json["encoding_format"] == "base64"
    assert batch.vectors.shape == (2, embedder.dimensions) and batch.vectors.dtype == np.float32
    assert embedder.model_id == f"openai/{embedder.model}@{embedder.dimensions}"


def test_openai_base64_and_float_replies_agree(fake_api: FakeAPI, embedder: OpenAIEmbedder) -> None:
    texts = ["alpha", "beta gamma", "delta"]
    from_base64 = embedder.embed(texts).vectors
    fake_api.embeddings_encoding = "float"  # a server that ignores encoding_format
    from_float = embedder.embed(texts).vectors

    expected = np.stack([fake_embedding(t, 64) for t in texts])
    np.testing.assert_allclose(from_base64, expected, atol=1e-6)
    np.testing.assert_allclose(from_float, from_base64, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(from_float, axis=1), 1.0, atol=1e-6)


def test_openai_packs_by_input_count(fake_api: FakeAPI, embedder: OpenAIEmbedder) -> None:
    texts = [f"segment {i}" for i in range(5000)]
    batch = embedder.embed(texts)

    assert [len(r.json["input"]) for r in fake_api.requests] == [2048, 2048, 904]
    assert batch.requests == 3
    assert batch.tokens == sum(count_tokens(t) for t in texts)
    expected = np.stack([fake_embedding(texts[i], 64) for i in (0, 2048, 4999)])
    np.testing.assert_allclose(batch.vectors[[0, 2048, 4999]], expected, atol=1e-6)  # order kept across requests


def test_openai_packs_by_tokens(fake_api: FakeAPI, embedder: OpenAIEmbedder) -> None:
    texts = [f"{i}" + " hello" * 1000 for i in range(300)]  # 1001 tokens each
    assert sum(count_tokens(t) for t in texts) == 300_300

    batch = embedder.embed(texts)

    sums = [sum(count_tokens(t) for t in r.json["input"]) for r in fake_api.requests]
    assert len(sums) == batch.requests == 2
    assert max(sums) <= 300_000
    assert batch.vectors.shape == (300, 64)


@pytest.mark.parametrize(
    ("texts", "match"),
    [(["fine", " hello" * 8193], "input 1 has 8193 tokens"), (["fine", ""], "input 1 is an empty string")],
    ids=["too-long", "empty"],
)
def test_openai_rejects_bad_inputs_before_any_request(
    fake_api: FakeAPI, embedder: OpenAIEmbedder, texts: list[str], match: str
) -> None:
    with pytest.raises(PermanentProviderError, match=match):
        embedder.embed(texts)
    assert fake_api.requests == []


def test_openai_empty_batch_makes_no_request(fake_api: FakeAPI, embedder: OpenAIEmbedder) -> None:
    batch = embedder.embed([])
    assert batch.vectors.shape == (0, 64) and (batch.tokens, batch.requests) == (0, 0)
    assert fake_api.requests == []


@pytest.mark.parametrize(
    ("reply", "error", "retry_after"),
    [
        (openai_error(429, "insufficient_quota", type="insufficient_quota"), QuotaExhaustedError, None),
        (openai_error(429, "rate_limit_exceeded", type="tokens", retry_after_ms=522), TransientProviderError, 0.522),
        (openai_error(429, "rate_limit_exceeded", type="requests", retry_after=2), TransientProviderError, 2.0),
        (openai_error(401, "invalid_api_key", message=f"Incorrect API key: {OPENAI_KEY}"), AuthenticationError, None),
        (openai_error(400, None, message=f"bad request for {OPENAI_KEY}"), PermanentProviderError, None),
        (openai_error(503, None, type="server_error"), TransientProviderError, None),
        (dropped(), TransientProviderError, None),
    ],
    ids=["insufficient_quota", "rate-limit-ms", "rate-limit-s", "401", "400", "503", "dropped"],
)
def test_openai_errors_map_to_classes_after_one_request(
    fake_api: FakeAPI, embedder: OpenAIEmbedder, reply: Reply, error: type[ProviderError], retry_after: float | None
) -> None:
    fake_api.enqueue(EMBEDDINGS, reply)
    with pytest.raises(error) as caught:
        embedder.embed(["some text"])
    assert type(caught.value) is error
    assert caught.value.retry_after == retry_after
    assert len(fake_api.requests) == 1
    assert_no_key(caught.value)


def test_openai_slow_answer_times_out_as_transient(fake_api: FakeAPI) -> None:
    embedder = OpenAIEmbedder(OPENAI_KEY, base_url=fake_api.openai_url, timeout=0.3)
    fake_api.enqueue(EMBEDDINGS, slow(3))
    with pytest.raises(TransientProviderError, match="timed out"):
        embedder.embed(["late"])


def test_600_inputs_of_1001_tokens_go_out_in_3_requests(fake_api: FakeAPI) -> None:
    """300,000 tokens per request: 299 inputs of 1,001 tokens fit, so 299 + 299 + 2."""
    texts = [f"{i}" + " hello" * 1000 for i in range(600)]  # distinct; a number below 1000 is one token
    assert {cl100k_count(t) for t in texts} == {1001}
    embedder = OpenAIEmbedder(OPENAI_KEY, base_url=fake_api.openai_url, dimensions=8)

    batch = embedder.embed(texts)

    sent = [r.json["input"] for r in fake_api.requests_to(EMBEDDINGS)]
    assert [len(inputs) for inputs in sent] == [299, 299, 2]
    assert [text for inputs in sent for text in inputs] == texts
    assert (batch.requests, batch.tokens, batch.vectors.shape) == (3, 600 * 1001, (600, 8))


@pytest.mark.parametrize(
    ("counts", "ranges"),
    [
        ([], []),
        ([5], [(0, 1)]),
        ([1001] * 600, [(0, 299), (299, 598), (598, 600)]),
        ([300_000, 1], [(0, 1), (1, 2)]),  # a request exactly at the limit
        ([299_999, 1], [(0, 2)]),
        ([299_999, 2], [(0, 1), (1, 2)]),
        ([1] * 2049, [(0, 2048), (2048, 2049)]),  # 2048 inputs at most
        ([1] * 2048, [(0, 2048)]),
        ([400_000, 5], [(0, 1), (1, 2)]),  # one oversized input alone (the embedder rejects it before)
    ],
)
def test_pack_keeps_each_request_within_2048_inputs_and_300k_tokens(counts, ranges) -> None:
    assert [(r.start, r.stop) for r in pack(counts)] == ranges


@pytest.mark.parametrize(
    ("counts", "ranges"),
    [
        # After a cut by tokens, the next request is cut at 2048 inputs counted from its own start.
        ([300_000] + [1] * 2049, [(0, 1), (1, 2049), (2049, 2050)]),
        # After a cut, the next request's token total starts from nothing: 299,999 + 1 fits exactly.
        ([300_000, 299_999, 1], [(0, 1), (1, 3)]),
    ],
)
def test_pack_starts_each_request_afresh(counts, ranges) -> None:
    assert [(r.start, r.stop) for r in pack(counts)] == ranges
