"""The user's chat server reads the knowledge base, unchanged (issue 17).

Its exact query, both forms, with psycopg2 and psycopg2-style parameters, through a client configured
only from the DB_* lines `gdr db env` prints, against an embedded Postgres of its own GDR_HOME reached
over TCP with the reader's password. The samples are stored with 1536-d vectors from the real OpenAI
SDK talking to the fake server (tests/fakeapi.py), whose vector for a text is a function of the text:
a question that is a stored turn's text finds that turn with similarity 1.
"""

from __future__ import annotations

import json
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import psycopg
import psycopg2
import pytest
from typer.testing import CliRunner

from gent_disagreement_rag.cli import app
from gent_disagreement_rag.providers.embedders.openai import OpenAIEmbedder
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import load_catalogue
from gent_disagreement_rag.sources.feeds import FeedItem
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.storage.embedded import stop_embedded
from gent_disagreement_rag.storage.reader import PASSWORD_FILE, READER_ROLE
from gent_disagreement_rag.text.chunking import Chunk
from tests.support.builders import free_port, segment
from tests.support.chat_server import QUERY, THRESHOLD
from tests.support.fakeapi import FakeAPI
from tests.support.paths import REPO_ROOT

LOCAL_ONLY_EPISODE = "4"  # stored with local vectors only: the chat views leave it out
CATALOGUE = {str(e.episode_id): e for e in load_catalogue(REPO_ROOT / "data" / "episodes.json")}


def script(episode_id: str) -> dict:
    return json.loads((REPO_ROOT / "data" / "samples" / f"GDR-{int(episode_id):03d}.script.json").read_text())


def segments_of(turns: list[dict]) -> list[Chunk]:
    return [segment(i, t["speaker_name"], t["start"], t["end"], t["text"], len(t["text"].split()))
            for i, t in enumerate(turns)]


def store_openai(db: Database, embedder: OpenAIEmbedder, episode_id: str, segs: list[Chunk]) -> None:
    segment_store.store_episode(db, episode_id, segs, model_id=embedder.model_id, provider="openai", model=embedder.model,
                        vectors=embedder.embed([s.text for s in segs]).vectors)


class Chat:
    """The samples stored in an embedded Postgres of its own, and what `gdr db env` printed for it."""

    def __init__(self, settings: Settings, env: dict[str, str], db_env: dict[str, str], stderr: str, embedder: OpenAIEmbedder):
        self.settings, self.env, self.db_env, self.stderr, self.embedder = settings, env, db_env, stderr, embedder

    def connect(self):
        """psycopg2, configured the way the chat server is: from the DB_* variables alone."""
        e = self.db_env
        return psycopg2.connect(host=e["DB_HOST"], port=e["DB_PORT"], user=e["DB_USER"], password=e["DB_PASSWORD"],
                                database=e["DB_NAME"])

    def question(self, text: str) -> str:
        """The question's vector as the chat server passes it to `%s::vector`: the text of a list."""
        return str(self.embedder.embed([text]).vectors[0].tolist())

    def ask(self, conn, text: str, limit: int = 5, threshold: float | None = None) -> list[tuple]:
        vector = self.question(text)
        with conn.cursor() as cur:
            if threshold is None:
                cur.execute(QUERY.format(where=""), (vector, limit))
            else:
                cur.execute(QUERY.format(where=THRESHOLD), (vector, vector, threshold, limit))
            return cur.fetchall()


@pytest.fixture(scope="module")
def chat() -> Iterator[Chat]:
    home = Path(tempfile.mkdtemp(prefix="gdr-test-chat-"))
    home.chmod(0o755)  # postgres runs as another OS user when we are root
    api = FakeAPI()
    env = {"GDR_HOME": str(home / "gdr"), "EMBEDDED_TCP_PORT": str(free_port()),
           "EPISODES_FILE": str(REPO_ROOT / "data" / "episodes.json"), "EMBEDDER": "openai",
           **{k.upper(): v for k, v in api.settings_fields().items()}}
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    try:
        with api:
            embedder = OpenAIEmbedder.from_settings(settings)
            with Database.from_settings(settings, migrate_schema=True) as db:
                episode_store.sync_catalogue(db, CATALOGUE.values())
                for episode_id in ("1", "2", "3"):
                    store_openai(db, embedder, episode_id, segments_of(script(episode_id)["turns"]))
                local = segments_of(script(LOCAL_ONLY_EPISODE)["turns"])
                vectors = np.random.default_rng(4).standard_normal((len(local), 384)).astype(np.float32)
                segment_store.store_episode(db, LOCAL_ONLY_EPISODE, local, model_id="local/all-MiniLM-L6-v2@384", provider="local",
                                    model="all-MiniLM-L6-v2", vectors=vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
            result = CliRunner().invoke(app, ["db", "env"], env=env, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            db_env = dict(line.split("=", 1) for line in result.stdout.splitlines())
            yield Chat(settings, env, db_env, result.stderr, embedder)
    finally:
        stop_embedded(settings)
        shutil.rmtree(home, ignore_errors=True)


def test_db_env_prints_the_five_variables_of_a_password_only_tcp_reader(chat: Chat) -> None:
    assert list(chat.db_env) == ["DB_HOST", "DB_PORT", "DB_USER", "DB_PASSWORD", "DB_NAME"]
    assert chat.db_env["DB_HOST"] == "127.0.0.1" and chat.db_env["DB_PORT"] == chat.env["EMBEDDED_TCP_PORT"]
    assert chat.db_env["DB_USER"] == READER_ROLE and len(chat.db_env["DB_PASSWORD"]) >= 32
    password_file = chat.settings.home / PASSWORD_FILE
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password_file.read_text().strip() == chat.db_env["DB_PASSWORD"]
    assert "1 processed episodes have no openai/text-embedding-3-small@1536 vectors" in chat.stderr
    # A second run prints the same password; the server's log never saw it.
    again = CliRunner().invoke(app, ["db", "env"], env=chat.env, catch_exceptions=False)
    assert again.stdout.splitlines()[3] == f"DB_PASSWORD={chat.db_env['DB_PASSWORD']}"
    assert chat.db_env["DB_PASSWORD"] not in (chat.settings.pgdata / "log").read_text(errors="ignore")


def test_tcp_lets_in_only_the_reader_with_its_password(chat: Chat) -> None:
    e = chat.db_env
    for user, password in ((READER_ROLE, "not-the-password"), ("postgres", e["DB_PASSWORD"]), ("postgres", "")):
        with pytest.raises(psycopg2.OperationalError) as failure:
            psycopg2.connect(host=e["DB_HOST"], port=e["DB_PORT"], user=user, password=password, database=e["DB_NAME"])
        assert ("password authentication failed" in str(failure.value)) or ("pg_hba.conf rejects" in str(failure.value))
    with chat.connect() as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT count(*) FROM public.provider_calls")  # the cost ledger is not the reader's
    with chat.connect() as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            cur.execute("CREATE TEMP TABLE t (x int)")


def test_the_default_embedded_server_stays_socket_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["db", "env"], env={"GDR_HOME": str(tmp_path), "EMBEDDED_TCP_PORT": None})
    assert result.exit_code == 1 and "Unix socket only: set EMBEDDED_TCP_PORT" in result.stderr
    assert not (tmp_path / "pgdata").exists() and not (tmp_path / PASSWORD_FILE).exists()


@pytest.mark.parametrize("threshold", [None, 0.999])
def test_the_exact_query_finds_the_turn_with_its_speaker_episode_title_and_date(chat: Chat, threshold) -> None:
    for episode_id, words in (("1", "parasitic mite that feeds"), ("3", "lactic acid")):
        turn = next(t for t in script(episode_id)["turns"] if words in t["text"])
        with chat.connect() as conn:
            rows = chat.ask(conn, turn["text"], limit=5, threshold=threshold)
        name, text, number, title, published, similarity = rows[0]
        entry = CATALOGUE[episode_id]
        assert (name, text, number, title, published) == (turn["speaker_name"], turn["text"], int(episode_id),
                                                          entry.title, entry.published)
        assert isinstance(published, date) and similarity == pytest.approx(1.0, abs=1e-5)
        similarities = [r[5] for r in rows]
        assert similarities == sorted(similarities, reverse=True) and None not in similarities
        if threshold is None:
            assert len(rows) == 5
        else:  # the fake's vectors of other texts are near-orthogonal: only the turn itself passes 0.999
            assert len(rows) == 1


def test_every_visible_row_belongs_to_an_episode_with_openai_vectors_and_a_named_speaker(chat: Chat) -> None:
    with chat.connect() as conn:
        rows = chat.ask(conn, "anything at all", limit=1000)
        with conn.cursor() as cur:
            cur.execute("SELECT episode_number, title, date_published FROM episodes ORDER BY episode_number")
            episodes = cur.fetchall()
    expected = sum(len(script(e)["turns"]) for e in ("1", "2", "3"))
    assert len(rows) == expected
    assert {r[2] for r in rows} == {1, 2, 3}  # the local-only episode 4 shows no segments
    names = {n for e in ("1", "2", "3") for n in script(e)["speakers_map"].values()}
    assert {r[0] for r in rows} == names
    assert episodes == [(int(k), e.title, e.published) for k, e in sorted(CATALOGUE.items(), key=lambda kv: int(kv[0]))]


def plan(conn, statement: str, params: tuple) -> str:
    with conn.cursor() as cur:
        cur.execute("SET enable_seqscan = off")  # a 100-row table: make the planner take any index it can
        cur.execute("EXPLAIN " + statement, params)
        return "\n".join(r[0] for r in cur.fetchall())


def test_explain_the_descending_query_cannot_use_hnsw_the_ascending_one_does(chat: Chat) -> None:
    """What is true, not what the issue hoped: `ORDER BY similarity DESC` (DESC implies NULLS FIRST) is never
    served by an index (Postgres only matches ascending, NULLS LAST pathkeys to ordering operators), whatever
    the views; the same query ordered by `ts.embedding <=> q` walks the model's HNSW index."""
    index = segment_store.index_name("openai/text-embedding-3-small@1536")
    vector = chat.question("bees")
    with chat.connect() as conn:
        verbatim = plan(conn, QUERY.format(where=""), (vector, 5))
        threshold = plan(conn, QUERY.format(where=THRESHOLD), (vector, vector, 0.5, 5))
        ascending = plan(conn, QUERY.format(where="").replace("ORDER BY similarity DESC", "ORDER BY ts.embedding <=> %s::vector"),
                         (vector, vector, 5))
    for exact in (verbatim, threshold):
        assert index not in exact
        assert "Sort Key: (('1'::double precision - " in exact  # every row's similarity computed, then sorted
    assert f"Index Scan using {index} on embeddings" in ascending
    assert not any("Sort Key" in line and "<=>" in line for line in ascending.splitlines())


def test_a_rerun_keeps_speaker_ids_and_a_reader_never_sees_half_an_episode(chat: Chat) -> None:
    with chat.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT name, id FROM speakers")
        before = dict(cur.fetchall())
    errors: list[BaseException] = []

    def rerun_episode(db: Database, segs: list[Chunk]) -> None:
        try:
            store_openai(db, chat.embedder, "1", segs)
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    turns = script("1")["turns"]
    rerun = segments_of(turns[:-1] + [{**turns[-1], "speaker_name": "A New Guest"}])
    with Database.from_settings(chat.settings, migrate_schema=False) as db:
        # Holding the model's row stops the rerun at its embeddings COPY (the foreign key's check waits for it):
        # the episode's old segments are deleted and the new ones copied, in its uncommitted transaction.
        with psycopg.connect(db.url) as blocker:
            blocker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (chat.embedder.model_id,))
            writer = threading.Thread(target=rerun_episode, args=(db, rerun))
            writer.start()
            with psycopg.connect(db.url, autocommit=True) as watcher:
                for _ in range(600):
                    waiting = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                              "AND query LIKE 'COPY embeddings%'").fetchone()[0]
                    if waiting:
                        break
                    time.sleep(0.05)
            assert waiting, "the rerun never reached its embeddings COPY"
            with chat.connect() as conn:
                mid = [r for r in chat.ask(conn, "anything", limit=1000) if r[2] == 1]
            blocker.rollback()
        writer.join(timeout=60)
    assert not errors and not writer.is_alive(), errors
    assert len(mid) == len(turns) and "A New Guest" not in {r[0] for r in mid}  # the old version, whole
    with chat.connect() as conn:
        after_rows = [r for r in chat.ask(conn, "anything", limit=1000) if r[2] == 1]
        with conn.cursor() as cur:
            cur.execute("SELECT name, id FROM speakers")
            after = dict(cur.fetchall())
    assert len(after_rows) == len(turns) and "A New Guest" in {r[0] for r in after_rows}
    assert {name: after[name] for name in before} == before and after["A New Guest"] not in before.values()


def feed_item(guid: str, number: int | None) -> FeedItem:
    return FeedItem(guid=guid, title=f"Feed {guid}", published=date(2025, 3, 1), enclosure_url=f"https://x/{guid}.mp3",
                    enclosure_length=None, enclosure_type="audio/mpeg", duration_seconds=None, episode_number=number)


def test_episode_numbers_catalogue_feed_and_reserved_are_unique_and_stable(db: Database) -> None:
    episode_store.sync_catalogue(db, [CATALOGUE["1"], CATALOGUE["2"].model_copy(update={"episode_id": "AGD-bonus"})])
    ids = episode_store.sync_feed(db, [feed_item("a", 12), feed_item("b", None), feed_item("c", 1), feed_item("d", 12)], {})

    def numbers() -> dict[str, int]:
        with db.connection() as conn:
            return dict(conn.execute("SELECT gdr_episode_id, episode_number FROM chat.episodes").fetchall())

    first = numbers()
    assert first["1"] == 1 and first[ids["a"]] == 12  # a catalogue number; a feed's itunes:episode
    reserved = [first["AGD-bonus"], first[ids["b"]], first[ids["c"]], first[ids["d"]]]  # no number of its own, or taken
    assert all(n > 1_000_000 for n in reserved) and len(set(first.values())) == len(first)
    rerun = episode_store.sync_feed(db, [feed_item("d", 12), feed_item("e", 13)], {})  # a rerun of the feed, one new item
    again = numbers()
    assert rerun["d"] == ids["d"] and {k: again[k] for k in first} == first and again[rerun["e"]] == 13


def test_a_catalogue_episode_keeps_its_number_when_a_feed_item_claimed_it_first(db: Database) -> None:
    # The feed is registered before the catalogue: the feed item holds the lower reserved number, so only the
    # rule "a catalogue episode's own number wins over a feed's" decides who is shown as 7.
    ids = episode_store.sync_feed(db, [feed_item("early", 7), feed_item("other", 8)], {})
    episode_store.sync_catalogue(db, [CATALOGUE["1"].model_copy(update={"episode_id": "7"})])
    with db.connection() as conn:
        numbers = dict(conn.execute("SELECT gdr_episode_id, episode_number FROM chat.episodes").fetchall())
    assert numbers["7"] == 7
    assert numbers[ids["early"]] > 1_000_000 and numbers[ids["other"]] == 8
    assert len(set(numbers.values())) == len(numbers)
