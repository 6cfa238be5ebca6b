"""A local HTTP server that speaks Deepgram's `/v1/listen` and OpenAI's `/v1/embeddings` wire formats.

Neither service is reachable from tests, and mocking our own code would not exercise the SDKs, so
the real SDK clients are pointed at this server instead. One instance serves both APIs:

    with FakeAPI() as api:                       # or the `fake_api` pytest fixture (tests/conftest.py)
        settings = Settings(_env_file=None, **api.settings_fields())

What `/v1/listen` answers, per request (the audio is matched by the sha256 of the request body):
    api.add_audio(audio_bytes, response=load_fixture("phone_call_463s_2spk_nova3_utterances.json"))
    api.add_audio(path, response=deepgram_response([(0, "Hello there."), (1, "Hi!")], duration=12.0))
    api.add_audio(path, seconds=3600.0)          # duration only: a filler transcript spanning it
    api.default_response = {...}                 # for audio never added
  Audio never added gets a filler transcript spanning its duration (as the transcriber probes it:
  PyAV, else a bitrate estimate), so generated test audio "just works".

What `/v1/embeddings` answers: `fake_embedding(text, dimensions)` for every input (deterministic,
unit length; `dimensions` honoured), base64 or float as the request's `encoding_format` asks (or
`api.embeddings_encoding` to force one), `usage` counted with cl100k_base. Requests over the real
API's limits (2048 inputs, 8192 tokens per input, 300k tokens per request, empty strings) get a 400.

Faults: a queue per path; each queued Reply answers exactly one request, then normal answers resume.
    api.enqueue(LISTEN, deepgram_error(429, "TOO_MANY_REQUESTS", retry_after=3), slow(5), dropped())
    api.enqueue(EMBEDDINGS, openai_error(429, "insufficient_quota", type="insufficient_quota"))
    api.enqueue(LISTEN, Reply(status=200, body={"request_id": "x"}))   # any status and body
    api.enqueue(LISTEN, dropped(), when=for_audio(path))  # only for requests that match (here: one file)
    api.enqueue(EMBEDDINGS, slow(5), when=containing("zebra"))  # (here: inputs with this text)

Latency of normal answers (a benchmark models the real services with it):
    api.deepgram_latency = (2.0, 1 / 200)        # seconds: base + per second of audio
    api.openai_latency = 0.3                     # seconds per request

Recorded requests: `api.requests` (every request, arrival order), `api.requests_to(LISTEN)`, and
`api.peak_concurrency(LISTEN)`; see `Recorded` for the fields.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import string
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import av
import numpy as np

from tests.support.builders import cl100k_count, deepgram_fixture

LISTEN = "/v1/listen"
EMBEDDINGS = "/v1/embeddings"
DEEPGRAM_KEY = "dg-fake-0123456789abcdef"
OPENAI_KEY = "sk-fake-0123456789abcdef"
NATIVE_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
_MODEL_UUID = "3b3aabe4-608a-46ac-9585-7960a25daf1a"
_FILLER = (
    "so the question is whether markets really price risk the way we think they do and honestly "
    "I am not convinced because the data keeps telling a different story about incentives policy "
    "and what people actually do when interest rates move"
).split()


def load_fixture(name: str) -> dict[str, Any]:
    """A real captured Deepgram response from tests/fixtures/deepgram."""
    return json.loads(deepgram_fixture(name).read_text())


def sha256_of(audio: bytes | Path) -> str:
    return hashlib.sha256(audio.read_bytes() if isinstance(audio, Path) else audio).hexdigest()


@dataclass(frozen=True)
class Reply:
    """One programmed answer. `status=None` means the normal answer, after `delay` extra seconds;
    `drop=True` closes the connection without answering. A dict/list body is sent as JSON."""

    status: int | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    # As a careless provider does: "{key}" in the body's strings becomes the key the request authenticated
    # with, and the key is sent back in an X-Echo-Key header (a test of masking can then fail).
    echo_key: bool = False


def slow(seconds: float) -> Reply:
    """The normal answer, `seconds` late (beyond a client's timeout: a timeout)."""
    return Reply(delay=seconds)


def dropped() -> Reply:
    return Reply(drop=True)


def deepgram_error(status: int, err_code: str, err_msg: str = "", *, retry_after: float | None = None,
                   echo_key: bool = False) -> Reply:
    """An error in Deepgram's format, e.g. (400, "Bad Request", "corrupt or unsupported data"),
    (401, "INVALID_AUTH"), (402, "ASR_PAYMENT_REQUIRED"), (429, "TOO_MANY_REQUESTS", retry_after=3).
    `echo_key`: see Reply (put "{key}" in `err_msg` where the key should appear)."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    body = {"err_code": err_code, "err_msg": err_msg or err_code, "request_id": "00000000-fake-request"}
    return Reply(status=status, body=body, headers=headers, echo_key=echo_key)


def _with_key(body: Any, key: str) -> Any:
    """`body` with "{key}" replaced by `key` in every string in it."""
    if isinstance(body, str):
        return body.replace("{key}", key)
    if isinstance(body, dict):
        return {k: _with_key(v, key) for k, v in body.items()}
    if isinstance(body, list):
        return [_with_key(v, key) for v in body]
    return body


def openai_error(
    status: int,
    code: str | None,
    *,
    type: str = "invalid_request_error",
    message: str = "",
    retry_after: float | None = None,
    retry_after_ms: int | None = None,
) -> Reply:
    """An error in OpenAI's format, e.g. (429, "rate_limit_exceeded", type="tokens", retry_after_ms=522),
    (429, "insufficient_quota", type="insufficient_quota"), (401, "invalid_api_key")."""
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    body = {"error": {"message": message or f"fake {code}", "type": type, "param": None, "code": code}}
    return Reply(status=status, body=body, headers=headers)


def peak_overlap(intervals: Sequence[tuple[float, float | None]]) -> int:
    """The most (start, end) intervals open at once; one without an end is still open."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals if end is not None])
    peak = current = 0
    for _, step in events:  # at equal times the end (-1) sorts first
        current += step
        peak = max(peak, current)
    return peak


def for_audio(audio: bytes | Path) -> Callable[[Recorded], bool]:
    """`enqueue(..., when=)` predicate: a `/v1/listen` request uploading this audio."""
    sha = sha256_of(audio)
    return lambda record: hashlib.sha256(record.body).hexdigest() == sha


def containing(text: str) -> Callable[[Recorded], bool]:
    """`enqueue(..., when=)` predicate: a request whose body contains this (ASCII) text."""
    needle = text.encode()
    return lambda record: needle in record.body


def _bare(token: str) -> str:
    return token.strip(string.punctuation).lower() or token


def deepgram_response(
    turns: Sequence[tuple[int, str]], *, duration: float | None = None, sha256: str = "", words_per_second: float = 2.5
) -> dict[str, Any]:
    """A Deepgram nova-3 response (words, utterances, paragraphs, one per turn) for (speaker, text) turns.

    Words are spread evenly over `duration` (default: at `words_per_second`), so any length can be
    simulated and the transcript covers the audio to its end.
    """
    split = [(speaker, text.split()) for speaker, text in turns if text.split()]
    n_words = sum(len(tokens) for _, tokens in split)
    duration = n_words / words_per_second if duration is None else duration
    slot = duration / max(n_words, 1)
    words: list[dict[str, Any]] = []
    utterances: list[dict[str, Any]] = []
    paragraphs: list[dict[str, Any]] = []
    for turn, (speaker, tokens) in enumerate(split):
        own = []
        for token in tokens:
            start = round(len(words) * slot, 3)
            word = {
                "word": _bare(token),
                "start": start,
                "end": round(start + 0.8 * slot, 3),
                "confidence": 0.99,
                "speaker": speaker,
                "speaker_confidence": 0.9,
                "punctuated_word": token,
            }
            words.append(word)
            own.append(word)
        text, first, last = " ".join(tokens), own[0]["start"], own[-1]["end"]
        utterances.append(
            {
                "start": first,
                "end": last,
                "confidence": 0.99,
                "channel": 0,
                "transcript": text,
                "words": own,
                "speaker": speaker,
                "id": f"00000000-0000-0000-0000-{turn:012d}",
            }
        )
        paragraphs.append(
            {
                "sentences": [{"text": text, "start": first, "end": last}],
                "speaker": speaker,
                "num_words": len(own),
                "start": first,
                "end": last,
            }
        )
    transcript = " ".join(w["punctuated_word"] for w in words)
    return {
        "metadata": {
            "transaction_key": "deprecated",
            "request_id": f"fake-{sha256[:16] or 'scripted'}",
            "sha256": sha256,
            "created": "2025-01-01T00:00:00.000Z",
            "duration": duration,
            "channels": 1,
            "models": [_MODEL_UUID],
            "model_info": {_MODEL_UUID: {"name": "general-nova-3", "version": "2024-12-20.0", "arch": "nova-3"}},
        },
        "results": {
            "channels": [
                {
                    "alternatives": [
                        {
                            "transcript": transcript,
                            "confidence": 0.99,
                            "words": words,
                            "paragraphs": {"transcript": transcript, "paragraphs": paragraphs},
                        }
                    ]
                }
            ],
            "utterances": utterances,
        },
    }


def filler_turns(
    seconds: float, *, seed: str = "", words_per_second: float = 2.5, turn_words: int = 40
) -> list[tuple[int, str]]:
    """Two speakers alternating turns of plausible English, about `seconds` long; varies with `seed`."""
    offset = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(_FILLER)
    n = max(1, round(seconds * words_per_second))
    tokens = [_FILLER[(offset + i) % len(_FILLER)] for i in range(n)]
    return [(turn % 2, " ".join(tokens[i : i + turn_words]) + ".") for turn, i in enumerate(range(0, n, turn_words))]


def probe_seconds(audio: bytes) -> float:
    """The audio's duration as its container gives it (PyAV), else a 128 kbit/s estimate, as Deepgram would
    measure it; probed here, not with the transcriber's own function, so the two can disagree."""
    try:
        with av.open(io.BytesIO(audio), mode="r") as container:
            if container.duration:
                return container.duration / av.time_base
    except av.FFmpegError:
        pass
    return len(audio) / 16_000


def _limit_problem(inputs: list[str], counts: list[int]) -> str | None:
    """Why the real embeddings API would reject these inputs with a 400, if it would."""
    if not inputs:
        return "'input' is empty"
    if len(inputs) > 2048:
        return f"'input' has {len(inputs)} items, the maximum is 2048"
    if "" in inputs:
        return "'$.input' is invalid: empty string"
    if max(counts) > 8192:
        return f"an input has {max(counts)} tokens, the maximum is 8192"
    if sum(counts) > 300_000:
        return f"the request has {sum(counts)} tokens, the maximum is 300000"
    return None


def fake_embedding(text: str, dimensions: int) -> np.ndarray:
    """The fake's vector for a text: a seeded normal vector, unit length, float32."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    return vector / np.linalg.norm(vector)


@dataclass
class Recorded:
    """One request as received. Header names are lower case; times are `time.monotonic()`.
    `ended` is taken just before the answer is written, so a client that waits for one answer before
    sending the next request never shows two overlapping requests."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    started: float
    ended: float | None = None
    status: int | None = None  # None: the connection was dropped

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default 5 drops connections under a benchmark's burst
    api: FakeAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out close the socket before a late answer: not worth a traceback."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        self.server.api._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeAPI:
    """The server; `url` is the Deepgram base URL, `openai_url` (= url + "/v1") OpenAI's."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.responses: dict[str, dict[str, Any]] = {}  # audio sha256 -> /v1/listen body
        self.audio_seconds: dict[str, float] = {}  # audio sha256 -> duration (latency, filler length)
        self.default_response: dict[str, Any] | None = None
        self.deepgram_latency: tuple[float, float] = (0.0, 0.0)
        self.openai_latency = 0.0
        self.embeddings_encoding: str | None = None  # "float"/"base64" overrides the request's choice
        self._queues: dict[str, deque[Reply]] = defaultdict(deque)
        self._matched: list[tuple[str, Callable[[Recorded], bool], deque[Reply]]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.openai_url = self.url + "/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fakeapi", daemon=True)
        self._thread.start()

    def __enter__(self) -> FakeAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay
        self._server.shutdown()
        self._server.server_close()

    def settings_fields(self) -> dict[str, str]:
        """Settings keyword arguments pointing both providers here; upper-cased, the environment variables."""
        return {
            "deepgram_api_key": DEEPGRAM_KEY,
            "deepgram_base_url": self.url,
            "openai_api_key": OPENAI_KEY,
            "openai_base_url": self.openai_url,
        }

    def add_audio(
        self, audio: bytes | Path, *, response: dict[str, Any] | bytes | None = None, seconds: float | None = None
    ) -> str:
        """Program `/v1/listen` for this audio: the body to answer (JSON, or bytes sent as they are: the
        benchmarks encode long bodies before they measure) and/or its duration. Returns its sha256."""
        sha = sha256_of(audio)
        with self._lock:
            if response is not None:
                self.responses[sha] = response
            if seconds is not None:
                self.audio_seconds[sha] = seconds
        return sha

    def enqueue(self, path: str, *replies: Reply, when: Callable[[Recorded], bool] | None = None) -> None:
        """Answer the next requests to `path` (LISTEN or EMBEDDINGS) with these replies, in order;
        with `when`, only the requests it matches (see `for_audio`, `containing`), before the general queue."""
        with self._lock:
            if when is None:
                self._queues[path].extend(replies)
            else:
                self._matched.append((path, when, deque(replies)))

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def recorded(self) -> list[Recorded]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self.requests)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def peak_concurrency(self, path: str) -> int:
        """The most requests to `path` in flight at once, from the recorded times."""
        return peak_overlap([(r.started, r.ended) for r in self.requests_to(path)])

    def _handle(self, handler: _Handler) -> None:
        started = time.monotonic()
        url = urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        record = Recorded(
            path=url.path,
            query=dict(parse_qsl(url.query)),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
            started=started,
        )
        with self._lock:
            self.requests.append(record)
            matched = [q for path, when, q in self._matched if path == url.path and q and when(record)]
            queue = matched[0] if matched else self._queues[url.path]
            reply = queue.popleft() if queue else Reply()
        if reply.drop:
            record.ended = time.monotonic()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.status is None:
            status, payload, latency = self._answer(record)
        else:
            status, payload, latency = reply.status, reply.body, 0.0
        headers = dict(reply.headers)
        if reply.echo_key:
            key = record.headers.get("authorization", "").split(" ", 1)[-1]
            payload, headers["X-Echo-Key"] = _with_key(payload, key), key
        # Latencies count from the request's arrival: the time spent reading and answering it is part of them.
        if self._stopping.wait(max(0.0, latency + reply.delay - (time.monotonic() - started))):
            return
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        record.ended, record.status = time.monotonic(), status
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(content)

    def _answer(self, record: Recorded) -> tuple[int, Any, float]:
        """The normal (status, body, latency) for a request."""
        if record.path == LISTEN:
            sha = hashlib.sha256(record.body).hexdigest()
            seconds = self._seconds(sha, record.body)
            base, per_second = self.deepgram_latency
            body = self.responses.get(sha) or self.default_response
            if body is None:
                body = deepgram_response(filler_turns(seconds, seed=sha), duration=seconds, sha256=sha)
            return 200, body, base + per_second * seconds
        if record.path == EMBEDDINGS:
            status, body = self._embeddings(record.json)
            return status, body, self.openai_latency
        return 404, {"error": f"no such path {record.path}"}, 0.0

    def _seconds(self, sha: str, audio: bytes) -> float:
        if sha not in self.audio_seconds:
            seconds = probe_seconds(audio)
            with self._lock:
                self.audio_seconds[sha] = seconds
        return self.audio_seconds[sha]

    def _embeddings(self, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        inputs = [request["input"]] if isinstance(request["input"], str) else list(request["input"])
        model = request["model"]
        dimensions = request.get("dimensions") or NATIVE_DIMENSIONS.get(model, 1536)
        counts = [cl100k_count(text) for text in inputs]
        problem = _limit_problem(inputs, counts)
        if problem:
            return 400, {"error": {"message": problem, "type": "invalid_request_error", "param": "input", "code": None}}
        encoding = self.embeddings_encoding or request.get("encoding_format") or "float"
        data = []
        for index, text in enumerate(inputs):
            vector = fake_embedding(text, dimensions)
            embedding = base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64" else None
            data.append({"object": "embedding", "index": index, "embedding": embedding or vector.tolist()})
        usage = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return 200, {"object": "list", "data": data, "model": model, "usage": usage}
