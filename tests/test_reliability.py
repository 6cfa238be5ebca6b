"""Reliability (RELIABILITY.md): faults, bad input, crash and resume, concurrent runs, database faults, load, secrets.

Everything is real: the `gdr` CLI (in a subprocess wherever a process is killed or two run at once),
Prefect runs on the session's API server, Postgres, and the Deepgram/OpenAI SDKs talking HTTP to
tests/fakeapi.py, which injects the faults. Nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gent_disagreement_rag import store
from gent_disagreement_rag.database import Database
from gent_disagreement_rag.settings import Settings
from tests.conftest import REPO_ROOT
from tests.fakeapi import (
    DEEPGRAM_KEY,
    EMBEDDINGS,
    LISTEN,
    OPENAI_KEY,
    FakeAPI,
    containing,
    deepgram_error,
    deepgram_response,
    dropped,
    for_audio,
    openai_error,
    sha256_of,
    slow,
)

GDR = Path(sys.executable).parent / "gdr"
SAMPLE_SPEECH = REPO_ROOT / "data" / "audio" / "GDR-001.mp3"  # 130 s of synthesised dialogue
MODEL_ID = "openai/text-embedding-3-small@1536"
DB_PASSWORD = "pg-pw-Zq81x"  # ignored by the trust-auth test server, but a secret all the same


# --- the test world ---------------------------------------------------------------------------


def make_tones(specs: list[tuple[Path, float, int]]) -> None:
    """Small distinct mp3 files (sine tones of `seconds` at `hz`), up to 50 per ffmpeg process."""
    for start in range(0, len(specs), 50):
        args = ["ffmpeg", "-loglevel", "error", "-y"]
        batch = specs[start : start + 50]
        for _, seconds, hz in batch:
            args += ["-f", "lavfi", "-i", f"sine=frequency={hz}:duration={seconds}"]
        for i, (path, _, _) in enumerate(batch):
            path.parent.mkdir(parents=True, exist_ok=True)
            args += ["-map", f"{i}:a", "-ac", "1", "-ar", "16000", "-b:a", "32k", str(path)]
        subprocess.run(args, check=True)


@dataclass
class World:
    """One test's catalogue, audio, fake APIs and database, as environment variables for `gdr`."""

    tmp: Path
    api: FakeAPI
    app_env: dict[str, str]
    prefect_api: str

    @property
    def settings(self) -> Settings:
        return Settings(_env_file=None)  # the environment is the world's (monkeypatched)

    @property
    def url(self) -> str:
        return self.app_env["DATABASE_URL"]

    @property
    def audio_dir(self) -> Path:
        return Path(self.app_env["AUDIO_DIR"])

    @property
    def transcripts_dir(self) -> Path:
        return Path(self.app_env["TRANSCRIPTS_DIR"])

    def audio(self, episode_id: str) -> Path:
        return self.audio_dir / f"{episode_id}.mp3"

    def catalogue(self, ids: list[str], seconds: float = 2.0, **extra: Any) -> list[str]:
        """Episodes with distinct tone audio; the fake Deepgram answers a filler transcript spanning it."""
        make_tones([(self.audio(e), seconds, 200 + 37 * i) for i, e in enumerate(ids)])
        self.write_catalogue([{"episode_id": e, "file_name": f"{e}.mp3", **extra} for e in ids])
        return ids

    def write_catalogue(self, entries: list[dict[str, Any]] | str) -> None:
        text = entries if isinstance(entries, str) else json.dumps(entries, ensure_ascii=False)
        Path(self.app_env["EPISODES_FILE"]).write_text(text, encoding="utf-8")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a `gdr` subprocess: this world, and the session's Prefect API server."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return {**base, **self.app_env, "PREFECT_API_URL": self.prefect_api,
                "PREFECT_HOME": str(self.tmp / "prefect-home"), **extra}

    def gdr(self, *args: str, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(GDR), *args], env=self.env(**extra_env), cwd=self.tmp, capture_output=True,
                              text=True, timeout=timeout)

    def spawn(self, *args: str, name: str = "gdr", **extra_env: str) -> subprocess.Popen[str]:
        """`gdr` in the background; its output goes to tmp/<name>.out and .err (no pipe to fill up)."""
        out = open(self.tmp / f"{name}.out", "w")
        err = open(self.tmp / f"{name}.err", "w")
        return subprocess.Popen([str(GDR), *args], env=self.env(**extra_env), cwd=self.tmp, stdout=out, stderr=err,
                                text=True)

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text() + (self.tmp / f"{name}.err").read_text()

    def rows(self) -> dict[str, store.EpisodeRow]:
        with Database.from_settings(self.settings) as db:
            return {row.episode_id: row for row in store.list_episodes(db)}

    def statuses(self) -> dict[str, str]:
        return {e: row.status for e, row in self.rows().items()}

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def listen_counts(self) -> Counter[str]:
        """/v1/listen requests per episode (matched by the audio's hash)."""
        by_sha = {sha256_of(p): p.stem for p in self.audio_dir.glob("*.mp3") if p.is_file()}
        return Counter(by_sha.get(hashlib.sha256(r.body).hexdigest(), "?") for r in self.api.requests_to(LISTEN))

    def ledger(self, stage: str) -> Counter[str]:
        """Provider calls recorded in the cost ledger per episode (only calls that really happened)."""
        return Counter({e: n for e, n in self.sql(
            "SELECT episode_id, count(*) FROM provider_calls WHERE stage = %s GROUP BY episode_id", stage)})

    def assert_consistent(self) -> None:
        """Nothing half-written: a processed episode has contiguous segments, one vector each, and the
        same number of segments as its exported chunks; an episode that is not processed has none."""
        rows = self.sql(
            """SELECT e.episode_id, e.status, count(s.position), coalesce(max(s.position) + 1, 0),
                      (SELECT count(*) FROM embeddings m WHERE m.episode_id = e.episode_id)
               FROM episodes e LEFT JOIN segments s USING (episode_id) GROUP BY e.episode_id, e.status"""
        )
        for episode_id, status, segments, span, vectors in rows:
            if status == "processed":
                assert segments > 0 and segments == span == vectors, (episode_id, segments, span, vectors)
                chunks = json.loads((self.transcripts_dir / f"{episode_id}.chunks.json").read_text())
                assert len(chunks) == segments, (episode_id, len(chunks), segments)
            else:
                assert segments == vectors == 0, (episode_id, status, segments, vectors)
        orphans = self.sql("SELECT count(*) FROM segments s WHERE NOT EXISTS "
                           "(SELECT 1 FROM embeddings m WHERE m.episode_id = s.episode_id AND m.position = s.position)")
        assert orphans == [(0,)]


@pytest.fixture
def world(tmp_path: Path, fresh_db_url: str, fake_api: FakeAPI, prefect_api: str,
          monkeypatch: pytest.MonkeyPatch) -> World:
    app_env = {
        "DATABASE_URL": fresh_db_url,
        "GDR_HOME": str(tmp_path / "home"),
        "EPISODES_FILE": str(tmp_path / "episodes.json"),
        "AUDIO_DIR": str(tmp_path / "audio"),
        "TRANSCRIPTS_DIR": str(tmp_path / "transcripts"),
        **{k.upper(): v for k, v in fake_api.settings_fields().items()},
    }
    for name, value in app_env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "audio").mkdir()
    return World(tmp_path, fake_api, app_env, prefect_api)


def run_flow(**parameters: Any):
    """The `ingest` flow in this process; afterwards every pooled connection must be back in its pool."""
    from flows.ingest import close_run_databases, ingest, run_database

    try:
        state = asyncio.run(ingest(**parameters, return_state=True))
        stats = run_database(Settings(_env_file=None)).pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"], f"connections not returned to the pool: {stats}"
        return state
    finally:
        close_run_databases()


def wait_for(condition: Callable[[], Any], timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def script_transcript(world: World, episode_id: str, marker: str, seconds: float = 2.0) -> None:
    """The fake Deepgram answers this episode with text containing `marker`, so its embeddings can be told apart."""
    turns = [(0, f"{marker} opens the show today."), (1, f"thanks {marker} for having me.")]
    world.api.add_audio(world.audio(episode_id), response=deepgram_response(turns, duration=seconds))


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
