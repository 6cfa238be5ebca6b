"""Reliability (RELIABILITY.md): faults, bad input, crash and resume, concurrent runs, database faults, load, secrets.

Everything is real: the `gdr` CLI (in a subprocess wherever a process is killed or two run at once),
Prefect runs on the session's API server, Postgres, and the Deepgram/OpenAI SDKs talking HTTP to
tests/fakeapi.py, which injects the faults. Nothing of ours is mocked.
"""

from __future__ import annotations

import errno
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from gent_disagreement_rag.ingest.context import RunContext
from gent_disagreement_rag.ingest.sequence import stage_keys
from gent_disagreement_rag.ingest.plan import plan_episodes
from gent_disagreement_rag.ingest.stages import register_catalogue
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.conftest import REPO_ROOT
from tests.support.fakeapi import (
    DEEPGRAM_KEY,
    EMBEDDINGS,
    LISTEN,
    OPENAI_KEY,
    FakeAPI,
    containing,
    deepgram_error,
    deepgram_response,
    dropped,
    fake_embedding,
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
    spawned: list[subprocess.Popen[str]] = field(default_factory=list)

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
        with open(self.tmp / f"{name}.out", "w") as out, open(self.tmp / f"{name}.err", "w") as err:
            proc = subprocess.Popen([str(GDR), *args], env=self.env(**extra_env), cwd=self.tmp, stdout=out,
                                    stderr=err, text=True)
        self.spawned.append(proc)
        return proc

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text() + (self.tmp / f"{name}.err").read_text()

    def rows(self) -> dict[str, episode_store.EpisodeRow]:
        with Database.from_settings(self.settings) as db:
            return {row.episode_id: row for row in episode_store.list_episodes(db)}

    def statuses(self) -> dict[str, str]:
        return {e: row.status for e, row in self.rows().items()}

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(query, params or None).fetchall()

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
            """SELECT e.episode_id, e.file_name, e.status, count(s.position), coalesce(max(s.position) + 1, 0),
                      (SELECT count(*) FROM embeddings m WHERE m.episode_id = e.episode_id)
               FROM episodes e LEFT JOIN segments s USING (episode_id) GROUP BY e.episode_id"""
        )
        for episode_id, file_name, status, segments, span, vectors in rows:
            if status == "processed":
                assert segments > 0 and segments == span == vectors, (episode_id, segments, span, vectors)
                chunks = json.loads((self.transcripts_dir / f"{Path(file_name).stem}.chunks.json").read_text())
                assert len(chunks) == segments, (episode_id, len(chunks), segments)
            else:
                assert segments == vectors == 0, (episode_id, status, segments, vectors)
        orphans = self.sql("SELECT count(*) FROM segments s WHERE NOT EXISTS "
                           "(SELECT 1 FROM embeddings m WHERE m.episode_id = s.episode_id AND m.position = s.position)")
        assert orphans == [(0,)]


@pytest.fixture
def world(tmp_path: Path, fresh_db_url: str, fake_api: FakeAPI, prefect_api: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
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
    world = World(tmp_path, fake_api, app_env, prefect_api)
    yield world
    for proc in world.spawned:  # a failed test must not leave a `gdr ingest` running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_flow(stats: dict[str, int] | None = None, ctx: RunContext | None = None, **parameters: Any):
    """The `ingest` flow in this process, on `ctx` or a context from the environment's settings; afterwards
    every pooled connection must be back in its pool (the pool's final statistics go into `stats`)."""
    from gent_disagreement_rag.orchestration.flows import ingest

    ctx = ctx or RunContext.open(Settings(_env_file=None))
    try:
        with ctx.activated():
            state = ingest(**parameters, return_state=True)
        pool = ctx.db.pool
        # (a connection the pool is still opening in the background counts in pool_size: give it a moment)
        wait_for(lambda: pool.get_stats()["pool_available"] == pool.get_stats()["pool_size"], timeout=15,
                 what=f"every connection back in the pool: {pool.get_stats()}")
        if stats is not None:
            stats.update(pool.get_stats())
        return state
    finally:
        ctx.close()


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


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("catalogue", "message"),
    [
        ('[{"episode_id": 1, "file_name": "a.mp3"},]', "not valid JSON: Expecting value at line 1 column 42"),
        ('[{"episode_id": 1, "file_name": "a.mp3"}, {"episode_id": "1", "file_name": "b.mp3"}]',
         "entry 2 (episode_id '1'): field 'episode_id': duplicate of entry 1 ('1')"),
        ('[{"file_name": "a.mp3"}]', "entry 1: field 'episode_id': Field required"),
        ('[{"episode_id": 7}]', "entry 1 (episode_id 7): field 'file_name': required (or give an audio_url)"),
        ('{"episode_id": 7}', "expected a JSON list of episodes, got dict"),
    ],
    ids=["bad-json", "duplicate-id", "missing-id", "missing-file", "not-a-list"],
)
def test_a_malformed_catalogue_stops_gdr_ingest_before_any_work(world: World, catalogue: str, message: str) -> None:
    from typer.testing import CliRunner

    from gent_disagreement_rag.cli import app

    world.write_catalogue(catalogue)
    result = CliRunner().invoke(app, ["ingest"], terminal_width=1000)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {world.app_env['EPISODES_FILE']}: {message}"
    assert world.api.requests == [] and world.rows() == {}


def test_unknown_speaker_ids_and_non_ascii_titles_and_names(world: World) -> None:
    file_name = "épisode-東京.mp3"
    make_tones([(world.audio_dir / file_name, 3, 440)])
    title = "Ça coûte cher — 経済の話 🎙"
    world.write_catalogue([{"episode_id": "U-1", "file_name": file_name, "title": title,
                            "speakers_map": {"0": "Zoë Ångström", "1": "李雷", "9": "Nobody"}}])
    turns = [(0, "Bienvenue au café, naïve question d'abord."), (1, "東京 の 経済 は 強い です."),
             (2, "A third voice nobody named.")]
    world.api.add_audio(world.audio_dir / file_name, response=deepgram_response(turns, duration=3.0))

    assert run_flow().is_completed()

    speakers = world.sql("SELECT speaker, text FROM segments WHERE episode_id = 'U-1' ORDER BY position")
    assert {s for s, _ in speakers} == {"Zoë Ångström", "李雷", "Speaker 2"}  # an unnamed id is "Speaker N"
    assert any("東京" in text for _, text in speakers)
    markdown = (world.transcripts_dir / "épisode-東京.md").read_text(encoding="utf-8")
    assert title in markdown and "Zoë Ångström" in markdown and "李雷" in markdown and "Speaker 2" in markdown
    assert world.rows()["U-1"].title == title
    world.assert_consistent()


def _bad_audio(world: World) -> dict[str, Path]:
    """The same kinds of bad audio files for both transcribers."""
    audio = world.audio_dir
    files = {"B-empty": audio / "B-empty.mp3", "B-text": audio / "B-text.mp3", "B-zero": audio / "B-zero.mp3"}
    files["B-empty"].write_bytes(b"")
    files["B-text"].write_text("These are show notes, not audio.\n" * 50)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0",
                    "-b:a", "32k", str(files["B-zero"])], check=True)  # a header and no audio frame
    entries = [{"episode_id": "B-missing", "file_name": "B-missing.mp3"}]
    entries += [{"episode_id": e, "file_name": p.name} for e, p in files.items()]
    entries.append({"episode_id": "B-trunc", "file_name": "B-trunc.mp3"})
    entries.append({"episode_id": "B-ok", "file_name": "B-ok.mp3"})
    world.write_catalogue(entries)
    return files


def test_bad_audio_files_with_deepgram(world: World) -> None:
    files = _bad_audio(world)
    make_tones([(world.audio("B-ok"), 3, 300), (world.tmp / "ten.mp3", 10, 500)])
    whole = (world.tmp / "ten.mp3").read_bytes()
    world.audio("B-trunc").write_bytes(whole[: len(whole) * 4 // 10])  # cut mid-frame at 40 %
    # What Deepgram answers for these (the fake answers anything, so it is told).
    world.api.enqueue(LISTEN, deepgram_error(400, "Bad Request", "corrupt or unsupported data"),
                      when=for_audio(files["B-text"]))
    world.api.add_audio(files["B-zero"], response=deepgram_response([], duration=0.0))

    state = run_flow(max_parallel=3)

    assert state.is_failed() and "2/6 episodes processed" in state.message, state.message
    rows = world.rows()
    episodes_file = world.app_env["EPISODES_FILE"]
    assert rows["B-missing"].last_error == (f"{episodes_file}: episode B-missing: field 'file_name': "
                                            f"audio file not found: {world.audio('B-missing')}")
    assert rows["B-empty"].last_error == (f"{episodes_file}: episode B-empty: field 'file_name': "
                                          f"audio file is empty (0 bytes): {files['B-empty']}")
    assert rows["B-text"].last_error == (
        "PermanentProviderError: Deepgram answered HTTP 400 (Bad Request): corrupt or unsupported data")
    assert rows["B-zero"].last_error.startswith("QualityGateError: episode B-zero: transcript failed the quality gate: "
                                                "no words recognised")
    assert rows["B-trunc"].status == rows["B-ok"].status == "processed"
    [upload] = [r for r in world.api.requests_to(LISTEN) if sha256_of(r.body) == sha256_of(world.audio("B-trunc"))]
    assert len(upload.body) == len(whole) * 4 // 10  # sent as it is: what is decodable is the provider's call
    # The missing and empty files were never uploaded; nothing was retried.
    assert world.listen_counts() == {"B-text": 1, "B-zero": 1, "B-trunc": 1, "B-ok": 1}
    world.assert_consistent()


@pytest.mark.slow
def test_bad_audio_files_with_local_whisper(world: World, monkeypatch) -> None:
    monkeypatch.setenv("TRANSCRIBER", "local")
    files = _bad_audio(world)
    shutil.copyfile(SAMPLE_SPEECH, world.audio("B-ok"))
    speech = SAMPLE_SPEECH.read_bytes()
    world.audio("B-trunc").write_bytes(speech[: len(speech) // 5])  # the first ~26 s, cut mid-frame

    state = run_flow(episode_ids=["B-missing", "B-empty", "B-text", "B-zero", "B-trunc"], max_parallel=2)

    assert state.is_failed() and "1/5 episodes processed" in state.message, state.message
    rows = world.rows()
    assert rows["B-missing"].last_error.endswith(f"audio file not found: {world.audio('B-missing')}")
    assert rows["B-empty"].last_error.endswith(f"audio file is empty (0 bytes): {files['B-empty']}")
    assert rows["B-text"].last_error.startswith(f"UndecodableAudioError: {files['B-text'].resolve()}: cannot decode the audio")
    assert rows["B-zero"].last_error.startswith(f"UndecodableAudioError: {files['B-zero'].resolve()}: cannot decode the audio")
    assert rows["B-trunc"].status == "processed" and 20 < rows["B-trunc"].duration_seconds < 30
    words = " ".join(text for (text,) in world.sql("SELECT text FROM segments WHERE episode_id = 'B-trunc'")).lower()
    assert "bee" in words  # the episode opens on urban beekeeping
    assert world.api.requests_to(LISTEN) == []
    world.assert_consistent()


def test_changed_audio_is_processed_again_and_its_old_rows_replaced(world: World) -> None:
    world.catalogue(["C-0", "C-1"], seconds=3)
    old = world.audio("C-0").read_bytes()
    world.api.add_audio(old, response=deepgram_response([(0, "oldversion " * 12), (1, "oldversion " * 12)], duration=3.0))
    assert run_flow().is_completed()
    before = world.rows()["C-0"]

    make_tones([(world.audio("C-0"), 5, 880)])  # the file is replaced by a new edit
    new = world.audio("C-0").read_bytes()
    world.api.add_audio(new, response=deepgram_response([(1, "newversion " * 30)], duration=5.0))
    assert run_flow().is_completed()

    after = world.rows()["C-0"]
    uploads = Counter(sha256_of(r.body) for r in world.api.requests_to(LISTEN))
    assert uploads == {sha256_of(old): 1, sha256_of(new): 1, sha256_of(world.audio("C-1")): 1}  # C-1 not again
    assert after.processed_sha256 == sha256_of(new) != before.processed_sha256
    texts = [t for (t,) in world.sql("SELECT text FROM segments WHERE episode_id = 'C-0'")]
    assert texts and all("newversion" in t and "oldversion" not in t for t in texts)
    assert after.duration_seconds == 5.0
    world.assert_consistent()


# --- crash and resume -----------------------------------------------------------------------------


def backends(world: World, where: str = "true") -> int:
    """Other sessions on the world's database (optionally only those matching a condition)."""
    return world.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     f"AND pid <> pg_backend_pid() AND {where}")[0][0]


@pytest.mark.slow
def test_sigkill_while_storing_then_resume(world: World) -> None:
    ids = world.catalogue([f"S-{i}" for i in range(6)])
    with Database.from_settings(world.settings) as db:
        segment_store.ensure_model(db, MODEL_ID, "openai", "text-embedding-3-small", 1536)
    with psycopg.connect(world.url) as locker:
        # Holding the model's row blocks each store transaction at its embeddings COPY: segments already
        # copied, nothing committed. The kill lands there.
        locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (MODEL_ID,))
        proc = world.spawn("ingest", "-j", "3", name="killed")
        wait_for(lambda: backends(world, "wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'") == 3
                 or proc.poll() is not None, what="three episodes storing")
        assert proc.poll() is None, world.output("killed")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: backends(world) == 0, what="the killed process's sessions to end")

    assert set(world.statuses().values()) == {"pending"}
    assert world.sql("SELECT count(*) FROM segments") == [(0,)]  # the half-done transactions were rolled back
    world.assert_consistent()
    paid = {e: world.listen_counts()[e] for e in ids}
    assert paid == {"S-0": 1, "S-1": 1, "S-2": 1, "S-3": 0, "S-4": 0, "S-5": 0}

    rerun = world.gdr("ingest", "-j", "3")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    # Transcriptions and embeddings done before the kill were not paid for again.
    assert world.listen_counts() == {e: 1 for e in ids}
    assert len(world.api.requests_to(EMBEDDINGS)) == 6
    assert world.ledger("transcribe") == world.ledger("embed") == {e: 1 for e in ids}


@pytest.mark.slow
def test_sigkill_while_transcribing_then_resume(world: World) -> None:
    ids = world.catalogue([f"R-{i}" for i in range(6)])
    slow_ids = ids[3:]
    for e in slow_ids:
        world.api.add_audio(world.audio(e), seconds=120)  # answered after 120 * 0.25 = 30 s
    world.api.deepgram_latency = (0.0, 0.25)
    proc = world.spawn("ingest", "-j", "3", name="killed")
    wait_for(lambda: proc.poll() is not None or (
        list(world.statuses().values()).count("processed") == 3 and
        sum(world.listen_counts()[e] for e in slow_ids) == 3), what="three processed, three transcribing")
    assert proc.poll() is None, world.output("killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: backends(world) == 0, what="the killed process's sessions to end")
    assert world.statuses() == {**{e: "processed" for e in ids[:3]}, **{e: "pending" for e in slow_ids}}
    world.assert_consistent()

    world.api.deepgram_latency = (0.0, 0.0)
    rerun = world.gdr("ingest", "-j", "3")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    # Finished episodes were not touched again; the three cut off mid-request were asked once more.
    assert world.listen_counts() == {**{e: 1 for e in ids[:3]}, **{e: 2 for e in slow_ids}}
    assert len(world.api.requests_to(EMBEDDINGS)) == 6
    assert world.ledger("transcribe") == world.ledger("embed") == {e: 1 for e in ids}


def stage_records(world: World, markers: dict[str, str]) -> dict[tuple[str, str], Path]:
    """The latest Prefect result record in the world's stage cache for each (stage, episode): each record
    read with Prefect's own deserializer and told apart by what it holds (the episode's marker, its export
    paths, or the fake's vector for its chunk)."""
    from prefect.results import ResultRecord

    kinds = {"TranscriptionResult": "transcribe", "FormattedEpisode": "format", "dict": "export", "EmbeddingBatch": "embed"}
    found: dict[tuple[str, str], Path] = {}
    paths = sorted((world.settings.home / "cache").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    records = {p: ResultRecord.deserialize(p.read_bytes()).result for p in paths}
    chunk_texts = {e: [c.text for c in r.chunks] for r in records.values() if type(r).__name__ == "FormattedEpisode"
                   for e, m in markers.items() if m in repr(r)}
    for path, result in records.items():
        stage = kinds[type(result).__name__]
        for e, marker in markers.items():
            if stage == "embed":
                mine = np.allclose(result.vectors[0], fake_embedding(chunk_texts[e][0], result.vectors.shape[1]), atol=1e-6)
            else:
                mine = (f"/{e}." if stage == "export" else marker) in repr(result)
            if mine:
                found[stage, e] = path
    return found


def last_task_state(name: str) -> str:
    return max(task_runs(name), key=lambda run: run.expected_start_time).state_name


def test_a_torn_stage_cache_record_is_a_miss_and_only_that_stage_runs_again(world: World) -> None:
    # Prefect writes a result record with a plain open("wb") + write: a kill in between leaves a prefix of it.
    torn = {"K-T": "transcribe", "K-F": "format", "K-X": "export", "K-E": "embed"}
    markers = {e: f"marker{i}x" for i, e in enumerate(world.catalogue(list(torn)))}
    for e, marker in markers.items():
        script_transcript(world, e, marker)
    for args in (["ingest"], ["ingest", "--force"]):  # the export's key counts its files: a rerun sets it for good
        done = world.gdr(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    texts = {e: world.sql("SELECT text FROM segments WHERE episode_id = %s ORDER BY position", e) for e in torn}
    records = stage_records(world, markers)
    assert len(records) == 16
    world.api.clear_requests()
    for e, stage in torn.items():
        whole = records[stage, e].read_bytes()
        records[stage, e].write_bytes(whole[: len(whole) // 2])

    rerun = world.gdr("ingest", "--force")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    log = (world.settings.home / "logs" / "ingest.log").read_text()
    for e, stage in torn.items():  # each torn record named in a warning
        assert f"stage cache record {records[stage, e]} is unreadable" in log, (e, stage)
    # Only the torn stage ran again; the paid ones asked their provider once more, nothing else did.
    assert world.listen_counts() == {"K-T": 1}
    embedded = Counter(e for r in world.api.requests_to(EMBEDDINGS) for e, m in markers.items() if containing(m)(r))
    assert embedded == {"K-E": 1}
    for e, torn_stage in torn.items():
        states = {stage: last_task_state(f"{stage}-{e}") for stage in ("transcribe", "format", "export", "embed")}
        assert states == {s: "Completed" if s == torn_stage else "Cached" for s in states}, (e, states)
    assert stage_records(world, markers) == records  # each torn record written again, whole, in its place
    assert {e: world.sql("SELECT text FROM segments WHERE episode_id = %s ORDER BY position", e) for e in torn} == texts


@pytest.mark.slow
def test_sigkill_while_a_stage_cache_record_is_written_then_resume(world: World) -> None:
    [e] = world.catalogue(["K-0"])
    settings = world.settings
    with RunContext.open(settings) as ctx:
        register_catalogue(ctx)
        [job] = plan_episodes(settings, ctx.db, episode_ids=[e]).jobs
        record = settings.result_storage_path / stage_keys(ctx, job).transcribe
    # strace kills `gdr ingest` (SIGKILL) as it enters the first write(2) to the transcription's record: the
    # file is created and empty, as a kill between Prefect's open and write leaves it. (With --seccomp-bpf,
    # strace missed that write.)
    killed = subprocess.run(["strace", "-f", "-o", "/dev/null", "-P", str(record), "-e", "trace=write",
                             "-e", "inject=write:signal=KILL", str(GDR), "ingest"],
                            env=world.env(), cwd=world.tmp, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL or killed.returncode == 128 + signal.SIGKILL, killed
    wait_for(lambda: backends(world) == 0, what="the killed process's sessions to end")
    assert record.stat().st_size == 0
    assert world.statuses() == {e: "pending"} and world.listen_counts() == {e: 1}
    world.assert_consistent()

    rerun = world.gdr("ingest")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"stage cache record {record} is unreadable" in (settings.home / "logs" / "ingest.log").read_text()
    assert world.statuses() == {e: "processed"}
    world.assert_consistent()
    assert world.listen_counts() == {e: 2} and len(world.api.requests_to(EMBEDDINGS)) == 1
    assert world.ledger("transcribe") == {e: 2} and world.ledger("embed") == {e: 1}  # both requests were paid
    from prefect.results import ResultRecord

    assert type(ResultRecord.deserialize(record.read_bytes()).result).__name__ == "TranscriptionResult"


@pytest.fixture
def full_disk(world: World) -> Iterator[Callable[[bool], None]]:
    """TRANSCRIPTS_DIR on a tmpfs of its own (1 MiB); `full(True)` fills it to the last byte with a filler
    file, so the kernel answers the next write with ENOSPC, `full(False)` deletes the filler."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (.ci/run runs as root)")
    folder = world.transcripts_dir
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)

    def full(on: bool) -> None:
        if not on:
            (folder / "filler").unlink()
            return
        with open(folder / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        assert shutil.disk_usage(folder).free == 0

    try:
        yield full
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_full_disk_while_exporting_fails_the_episode_and_keeps_the_old_version(world: World, full_disk) -> None:
    world.catalogue(["F-0", "F-1"])
    world.write_catalogue([{"episode_id": "F-0", "file_name": "F-0.mp3", "speakers_map": {"0": "Oldname"}}])
    first = world.gdr("ingest")
    assert first.returncode == 0, first.stdout + first.stderr
    old_files = {p.name: p.read_bytes() for p in world.transcripts_dir.iterdir()}
    old_segments = world.sql("SELECT position, speaker, text FROM segments ORDER BY position")
    assert len(old_files) == 5 and "Oldname" in {speaker for _, speaker, _ in old_segments}

    # New speaker names make F-0 stale (re-chunked, exported, embedded, stored again); F-1 is new.
    world.write_catalogue([{"episode_id": e, "file_name": f"{e}.mp3", "speakers_map": {"0": "Newname"}}
                           for e in ("F-0", "F-1")])
    full_disk(True)
    failed = world.gdr("ingest")

    assert failed.returncode == 1, failed.stdout + failed.stderr
    rows = world.rows()
    for e in ("F-0", "F-1"):
        assert rows[e].status == "failed"
        assert rows[e].last_error == (f"OSError: [Errno 28] No space left on device: "
                                      f"'{world.transcripts_dir.resolve() / f'{e}.raw.json'}'"), rows[e].last_error
    files = {p.name: p.read_bytes() for p in world.transcripts_dir.iterdir() if p.name != "filler"}
    assert files == old_files  # the old version whole, nothing of the new, no temporary file left
    assert world.sql("SELECT position, speaker, text FROM segments ORDER BY position") == old_segments
    assert world.sql("SELECT DISTINCT episode_id FROM segments") == [("F-0",)]

    full_disk(False)
    rerun = world.gdr("ingest")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert world.statuses() == {"F-0": "processed", "F-1": "processed"}
    world.assert_consistent()
    speakers = {speaker for (speaker,) in world.sql("SELECT DISTINCT speaker FROM segments")}
    assert "Newname" in speakers and "Oldname" not in speakers
    assert "Newname" in (world.transcripts_dir / "F-0.md").read_text()
    assert world.listen_counts() == {"F-0": 1, "F-1": 1}  # the transcriptions came from the stage cache
    assert world.ledger("transcribe") == {"F-0": 1, "F-1": 1}


# --- concurrent runs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ingest_runs_at_once_over_the_same_catalogue(world: World) -> None:
    ids = world.catalogue([f"D-{i}" for i in range(8)])
    world.api.deepgram_latency = (1.0, 0.0)
    nightly = world.spawn("ingest", "-j", "3", name="nightly")
    manual = world.spawn("ingest", "-j", "3", name="manual")
    codes = [nightly.wait(timeout=300), manual.wait(timeout=300)]  # a deadlock would time out here

    assert codes == [0, 0], world.output("nightly") + world.output("manual")
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    # Each episode claimed by one run at a time (the other reports it busy, not failed): paid for once.
    assert world.listen_counts() == {e: 1 for e in ids}
    assert len(world.api.requests_to(EMBEDDINGS)) == len(ids)
    assert world.ledger("transcribe") == world.ledger("embed") == {e: 1 for e in ids}


# --- database faults --------------------------------------------------------------------------------


def test_postgres_down_at_start_is_one_clear_line_and_exit_code_1(world: World) -> None:
    from tests.support.builders import free_port

    world.catalogue(["Z-0"])
    url = f"postgresql://gdr:{DB_PASSWORD}@127.0.0.1:{free_port()}/gdr"  # nothing listens there
    result = world.gdr("ingest", DATABASE_URL=url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith('error: cannot connect to Postgres: connection failed: connection to server at '
                                    '"127.0.0.1", port ')
    assert result.stderr.endswith("Connection refused\n") and result.stderr.count("\n") == 1, result.stderr
    assert DB_PASSWORD not in result.stderr
    assert world.api.requests == []


@pytest.fixture
def own_postgres() -> Any:
    """A Postgres of this test's own, to stop and start without disturbing the session's."""
    from gent_disagreement_rag.storage.embedded import embedded_url, stop_embedded

    home = Path(tempfile.mkdtemp(prefix="gdr-test-restart-"))
    home.chmod(0o755)
    settings = Settings(_env_file=None, gdr_home=home)
    url = embedded_url(settings)
    try:
        yield url, settings
    finally:
        stop_embedded(settings)
        shutil.rmtree(home, ignore_errors=True)


def restart_postgres(settings: Settings, down_seconds: float) -> tuple[datetime, datetime]:
    """Stop Postgres, wait, start it again: (a moment it was still down, a moment it was accepting again)."""
    from gent_disagreement_rag.storage.embedded import embedded_server, stop_embedded

    assert stop_embedded(settings)
    time.sleep(down_seconds)
    still_down = datetime.now(timezone.utc)
    embedded_server(settings.pgdata)
    return still_down, datetime.now(timezone.utc)


@pytest.mark.slow
def test_postgres_restarted_mid_run(world: World, own_postgres, monkeypatch) -> None:
    url, pg = own_postgres
    world.app_env["DATABASE_URL"] = url
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("DB_POOL_TIMEOUT", "1")
    ids = world.catalogue(["M-0", "M-1", "M-2"])

    # 1. Postgres goes away while the episodes are being transcribed and stays away longer than a
    #    worker waits for a connection; the transcriptions already paid for must not be asked again.
    world.api.deepgram_latency = (2.0, 0.0)

    def outage() -> None:
        wait_for(lambda: len(world.api.requests_to(LISTEN)) == 3, what="three transcriptions in flight")
        restart_postgres(pg, down_seconds=4)

    chaos = Chaos(outage)
    state = run_flow(max_parallel=3)
    chaos.join()
    assert state.is_completed(), state.message
    assert world.listen_counts() == {e: 1 for e in ids}
    assert world.ledger("transcribe") == {e: 1 for e in ids}
    world.assert_consistent()

    # 2. Postgres restarts while an episode is being stored: the store transaction dies with its
    #    connection, the pool replaces its broken connections, and the store stage's retry succeeds.
    make_tones([(world.audio("M-3"), 2.0, 990)])
    world.write_catalogue([{"episode_id": e, "file_name": f"{e}.mp3"} for e in [*ids, "M-3"]])
    locker = psycopg.connect(url)  # holds the store at its embeddings COPY until the restart
    locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (MODEL_ID,))

    def restart_while_storing() -> None:
        try:
            wait_for(lambda: backends(world, "wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'") == 1,
                     what="the store to start")
            restarts.append(restart_postgres(pg, down_seconds=0.5))
        finally:
            locker.close()  # (dead already after a restart; otherwise this unblocks the store)

    restarts: list[tuple[datetime, datetime]] = []

    world.api.deepgram_latency = (0.0, 0.0)
    chaos = Chaos(restart_while_storing)
    state = run_flow()
    chaos.join()
    assert state.is_completed(), state.message
    assert world.statuses() == {e: "processed" for e in [*ids, "M-3"]}
    assert world.listen_counts()["M-3"] == 1 and len(world.api.requests_to(EMBEDDINGS)) == 4
    # The attempt the restart killed; retries (their delays are jittered) that started while Postgres was still
    # down; then one attempt, once it was starting up or back, which succeeded on the replaced connections. (An
    # attempt may start while Postgres is starting up and still succeed, so "back" is only known to lie between the
    # two marks.)
    [run] = task_runs("store-M-3")
    starts = [s.timestamp for s in task_run_states(run.id) if s.name in ("Running", "Retrying") and s.type.value == "RUNNING"]
    assert run.state_name == "Completed" and run.run_count == len(starts) >= 2, (run.state_name, run.run_count, starts)
    [(still_down, accepting)] = restarts
    assert starts[0] < still_down < starts[-1], (starts, restarts)
    assert len([t for t in starts if t > accepting]) <= 1, (starts, restarts)
    world.assert_consistent()


def task_run_states(task_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return sorted(client.read_task_run_states(task_run_id), key=lambda s: s.timestamp)


class Chaos(threading.Thread):
    """A fault injected from a thread; `join` re-raises what went wrong in it (a fault that never happened
    would otherwise leave the test passing, having shown nothing)."""

    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self._fault, self._error = target, None
        self.start()

    def run(self) -> None:
        try:
            self._fault()
        except BaseException as exc:
            self._error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self._error is not None:
            raise self._error


def task_runs(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))


@pytest.mark.slow
def test_sixteen_workers_on_a_pool_of_three_wait_for_connections(world: World, monkeypatch) -> None:
    # A run given its context uses that context's pool as it is: here 3 connections for 16 workers.
    settings = Settings(_env_file=None)
    ctx = RunContext(settings, Database.from_settings(settings, max_size=3))
    ids = world.catalogue([f"W-{i:02d}" for i in range(16)])
    with Database.from_settings(world.settings) as db:
        segment_store.ensure_model(db, MODEL_ID, "openai", "text-embedding-3-small", 1536)
    locker = psycopg.connect(world.url)  # three stores hold the three connections until released
    locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (MODEL_ID,))
    waiting: list[int] = []

    def release_when_exhausted() -> None:
        try:
            wait_for(lambda: backends(world, "wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'") == 3,
                     what="three stores holding the three connections")
            pool = ctx.db.pool
            wait_for(lambda: pool.get_stats().get("requests_waiting", 0) >= 10, what="the pool to run dry")
            waiting.append(pool.get_stats()["requests_waiting"])
        finally:
            locker.rollback()

    chaos = Chaos(release_when_exhausted)
    stats: dict[str, int] = {}
    state = run_flow(stats, ctx, max_parallel=16)
    chaos.join()
    locker.close()

    assert state.is_completed(), state.message
    assert world.statuses() == {e: "processed" for e in ids}
    assert waiting and waiting[0] >= 10 and stats["pool_max"] == 3 and stats.get("requests_errors", 0) == 0, (waiting, stats)
    assert world.listen_counts() == {e: 1 for e in ids}  # waiting for a connection never repeated a paid call
    world.assert_consistent()


# --- load -----------------------------------------------------------------------------------------


def memory_kb(pid: int) -> tuple[int, int]:
    """(resident now, resident at most so far) of a process, in kB. Not getrusage: a child's ru_maxrss
    also counts the memory of the parent it was forked from (the test process, before the exec)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@pytest.mark.slow
def test_two_hundred_episodes_sixteen_workers(world: World) -> None:
    ids = world.catalogue([f"L-{i:03d}" for i in range(200)], seconds=2)
    world.api.deepgram_latency = (0.3, 0.0)
    world.api.openai_latency = 0.1
    pool_size = Settings(_env_file=None, max_parallel_episodes=16).pool_size
    proc = world.spawn("ingest", "-j", "16", name="load", MAX_PARALLEL_EPISODES="16")
    samples: list[tuple[int, int, int]] = []  # (episodes processed, RSS kB, sessions on the database)
    peak = 0
    while proc.poll() is None:
        try:
            processed = world.sql("SELECT count(*) FROM episodes WHERE status = 'processed'")[0][0]
            rss, high = memory_kb(proc.pid)
        except (FileNotFoundError, KeyError):  # it has just exited (a zombie has no memory figures)
            continue
        samples.append((processed, rss, backends(world)))
        peak = max(peak, high)
        time.sleep(0.5)
    assert proc.returncode == 0, world.output("load")
    assert world.statuses() == {e: "processed" for e in ids}
    world.assert_consistent()
    assert world.listen_counts() == {e: 1 for e in ids}
    assert len(world.api.requests_to(EMBEDDINGS)) == 200

    # Memory is flat: from the 50th episode to the 200th the process grows by less than 64 MB
    # (a leak of 0.5 MB per episode would show as 75 MB).
    steady = [rss for processed, rss, _ in samples if processed >= 50]
    peak_connections = max(sessions for *_, sessions in samples)
    print(f"\nload: peak RSS {peak / 1024:.0f} MB; RSS at 50 episodes {steady[0] / 1024:.0f} MB, "
          f"highest after {max(steady) / 1024:.0f} MB; peak sessions {peak_connections} "
          f"(pool {pool_size} + 16 claims); {len(samples)} samples")
    assert len(steady) >= 10 and max(steady) - steady[0] < 64 * 1024, steady
    assert peak < 768 * 1024
    # Connections: the pool's plus one claim per worker at most, and none left once the run is over.
    assert peak_connections <= pool_size + 16, samples
    assert backends(world) == 0


# --- secrets --------------------------------------------------------------------------------------


def prefect_texts(since: Any) -> list[str]:
    """Everything the Prefect API holds about runs started after `since`: state messages, logs, artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    texts = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
        ids = [r.id for r in runs]
        assert ids
        texts += [r.model_dump_json() for r in runs]
        texts += [t.model_dump_json() for t in client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)))]
        offset = 0
        while batch := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), offset=offset):
            texts += [log.model_dump_json() for log in batch]
            offset += len(batch)
        texts += [a.model_dump_json() for a in client.read_artifacts() if a.flow_run_id in ids]
    return texts


@pytest.mark.slow
def test_secrets_appear_in_no_output_log_artifact_export_or_error(world: World) -> None:
    from datetime import datetime, timezone

    url = world.url.replace("postgres:@", f"postgres:{DB_PASSWORD}@")  # trust auth: accepted and ignored
    assert url != world.url
    ids = world.catalogue(["X-0", "X-1", "X-2", "X-3"])
    script_transcript(world, "X-2", "markerx2x")
    # Worst cases: providers that echo the key back in their error text.
    world.api.enqueue(LISTEN, deepgram_error(400, "Bad Request", f"could not read audio sent with key {DEEPGRAM_KEY}"),
                      when=for_audio(world.audio("X-1")))
    world.api.enqueue(EMBEDDINGS, openai_error(401, "invalid_api_key", message=f"Incorrect API key provided: {OPENAI_KEY}"),
                      when=containing("markerx2x"))
    since = datetime.now(timezone.utc)

    ingest = world.gdr("ingest", "-j", "1", DATABASE_URL=url)
    status = world.gdr("status", "--json", DATABASE_URL=url)

    assert ingest.returncode == 1 and status.returncode == 0
    rows = world.rows()
    assert [rows[e].status for e in ids] == ["processed", "failed", "failed", "pending"]
    # A bad key stops the run with one clear message; the episode after it is not started, not failed.
    reason = "AuthenticationError: OpenAI embeddings answered HTTP 401 (invalid_api_key): check OPENAI_API_KEY"
    assert rows["X-2"].last_error == reason
    last_line = ingest.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"run stopped: {reason} (1 episodes not started); 1/4 episodes processed"), last_line
    assert len(world.api.requests_to(EMBEDDINGS)) == 2  # X-0's and X-2's, none for X-3

    texts = {"gdr ingest": ingest.stdout + ingest.stderr, "gdr status": status.stdout + status.stderr}
    texts |= {f"prefect #{i}": text for i, text in enumerate(prefect_texts(since))}
    texts |= {str(p): p.read_text(errors="replace") for p in world.tmp.rglob("*") if p.is_file()}
    for table in ("episodes", "segments", "provider_calls"):
        texts[f"table {table}"] = "\n".join(r[0] for r in world.sql(f"SELECT t::text FROM {table} t"))
    assert len(texts) > 20 and "X-1" in texts["gdr ingest"]
    print(f"\nsecrets: searched {len(texts)} texts ({sum(map(len, texts.values())):,} characters)")
    for secret in (DEEPGRAM_KEY, OPENAI_KEY, DB_PASSWORD):
        leaks = [where for where, text in texts.items() if secret in text]
        assert leaks == [], f"{secret} found in {leaks}"
