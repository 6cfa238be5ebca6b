"""The ingest test world: one test's catalogue, audio, fake APIs and database as environment variables for `gdr`
(the `world` fixture), and helpers that read what a run left behind (statuses, stored texts, Prefect task runs)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gent_disagreement_rag.ingest.context import RunContext
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import app_environment, make_audio, shared_models
from tests.support.fakeapi import (
    LISTEN,
    FakeAPI,
    deepgram_response,
    sha256_of,
)
from tests.support.paths import REPO_ROOT
from tests.support.waiting import wait_for

GDR = Path(sys.executable).parent / "gdr"
SAMPLE_SPEECH = REPO_ROOT / "data" / "audio" / "GDR-001.mp3"  # 130 s of synthesised dialogue
MODEL_ID = "openai/text-embedding-3-small@1536"
DB_PASSWORD = "pg-pw-Zq81x"  # ignored by the trust-auth test server, but a secret all the same


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
        **shared_models(),
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


def script_transcript(world: World, episode_id: str, marker: str, seconds: float = 2.0) -> None:
    """The fake Deepgram answers this episode with text containing `marker`, so its embeddings can be told apart."""
    turns = [(0, f"{marker} opens the show today."), (1, f"thanks {marker} for having me.")]
    world.api.add_audio(world.audio(episode_id), response=deepgram_response(turns, duration=seconds))


def backends(world: World, where: str = "true") -> int:
    """Other sessions on the world's database (optionally only those matching a condition)."""
    return world.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     f"AND pid <> pg_backend_pid() AND {where}")[0][0]


def task_runs(name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))


@pytest.fixture
def one_episode(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, prefect_api) -> Path:
    """Catalogue of one episode, Q-0, with a 7-second tone; the environment points at this test's world."""
    audio = make_audio(settings.audio_dir / "Q-0.mp3", 7, 440)
    settings.episodes_file.write_text(json.dumps([{"episode_id": "Q-0", "file_name": "Q-0.mp3"}]))
    for name, value in app_environment(settings, fake_api).items():
        monkeypatch.setenv(name, value)
    return audio


def task_run_counts(name: str, since: datetime) -> list[int]:
    """How many times each task run of this name that started after `since` ran, as the Prefect API recorded it
    (the session's server also holds other tests' runs, which may share the name)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(any_=[name]), start_time=TaskRunFilterStartTime(after_=since)))
    return [r.run_count for r in runs]


def statuses(settings: Settings) -> dict[str, tuple[str, int, str | None]]:
    with Database.from_settings(settings) as db:
        return {e.episode_id: (e.status, e.segments, e.last_error) for e in episode_store.list_episodes(db)}


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
