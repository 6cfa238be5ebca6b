"""One test per bug that the suite once let through (issue 18; TESTING.md maps each bug to its test).

Each was seen failing with its bug put in. Oracles are computed here, by hand or with tiktoken/ffprobe
directly, never with the code under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from gent_disagreement_rag.providers.embedders.openai import OpenAIEmbedder
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.text.quality import check_transcript
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import app_environment, cl100k_count, deepgram_fixture, make_audio, run_ingest
from tests.support.fakeapi import (
    EMBEDDINGS,
    LISTEN,
    OPENAI_KEY,
    FakeAPI,
    deepgram_error,
    deepgram_response,
)

GDR = Path(sys.executable).parent / "gdr"


@pytest.fixture
def one_episode(settings: Settings, fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch, prefect_api) -> Path:
    """Catalogue of one episode, Q-0, with a 7-second tone; the environment points at this test's world."""
    audio = make_audio(settings.audio_dir / "Q-0.mp3", 7, 440)
    settings.episodes_file.write_text(json.dumps([{"episode_id": "Q-0", "file_name": "Q-0.mp3"}]))
    for name, value in app_environment(settings, fake_api).items():
        monkeypatch.setenv(name, value)
    return audio




def task_run_counts(name: str) -> list[int]:
    """How many times each task run of this name ran, as the Prefect API recorded it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))
    return [r.run_count for r in runs]


# --- retry only transient errors ------------------------------------------------------------------


def test_a_quality_gate_failure_is_not_retried(settings, one_episode, fake_api) -> None:
    """Words up to 50 s of a 100 s recording: the gate fails; retrying the same transcript cannot help."""
    truncated = deepgram_response([(0, "words " * 60), (1, "more words " * 30)], duration=50.0)
    truncated["metadata"]["duration"] = 100.0
    fake_api.add_audio(one_episode, response=truncated)

    state = run_ingest()

    assert state.is_failed()
    with Database.from_settings(settings) as db:
        [row] = episode_store.list_episodes(db)
    assert row.status == "failed" and row.last_error.startswith("QualityGateError: ")
    assert task_run_counts("format-Q-0") == [1]
    assert len(fake_api.requests_to(LISTEN)) == 1 and fake_api.requests_to(EMBEDDINGS) == []


# --- retry delays and Retry-After -------------------------------------------------------------------


def test_retries_wait_retry_after_then_1_2_4_8_seconds_less_jitter(one_episode, fake_api) -> None:
    """Lower bounds only (delays are 1, 2, 4, 8 s with 50 % jitter; a 429's Retry-After: 3 is waited out)."""
    fake_api.enqueue(LISTEN, deepgram_error(429, "TOO_MANY_REQUESTS", retry_after=3),
                     *[deepgram_error(503, "SERVICE_UNAVAILABLE")] * 3)

    assert run_ingest().is_completed()

    listen = fake_api.requests_to(LISTEN)
    assert [r.status for r in listen] == [429, 503, 503, 503, 200]
    gaps = [b.started - a.ended for a, b in zip(listen, listen[1:])]
    assert gaps[0] >= 2.9, gaps  # Retry-After: 3 (ignored, the first delay is at most 1.5 s)
    assert [g >= least for g, least in zip(gaps[1:], (1.0, 2.0, 4.0))] == [True] * 3, gaps


# --- cost ledger ---------------------------------------------------------------------------------------


def decoded_seconds(path: Path) -> float:
    """The audio's length by decoding it with ffmpeg and counting samples (mp3 gapless info trims the padding)."""
    pcm = subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
                         check=True, capture_output=True).stdout
    return len(pcm) / 2 / 16_000


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


# --- OpenAI batching -------------------------------------------------------------------------------------


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


# --- quality gate threshold ---------------------------------------------------------------------------------


def words_until(seconds: float) -> list[Word]:
    """One word per second, each 0.5 s long, the last one ending at `seconds`."""
    return [Word("word", end - 0.5, end) for end in range(1, int(seconds) + 1)] + (
        [Word("last", seconds - 0.5, seconds)] if seconds % 1 else [])


@pytest.mark.parametrize(("last_end", "passed"), [(79.5, False), (80.5, True)])
def test_coverage_just_under_80_percent_fails_and_just_over_passes(last_end: float, passed: bool) -> None:
    transcript = Transcript("deepgram", "nova-3", 100.0, words_until(last_end))
    report = check_transcript(transcript, 100.0)
    assert report.passed is passed, report.reasons
    assert report.flags == ([] if passed else ["truncated"])
    assert report.coverage == pytest.approx(last_end / 100)


# --- secret scrubbing ---------------------------------------------------------------------------------------


def test_scrub_replaces_every_secret_value() -> None:
    settings = Settings(_env_file=None, deepgram_api_key="dg-secret-1", openai_api_key="sk-secret-2",
                        db_host="db.example", db_password="pw-secret-3")
    text = "dg-secret-1 then sk-secret-2, pw-secret-3; and dg-secret-1 again"
    assert settings.scrub(text) == "*** then ***, ***; and *** again"
    url = "postgresql://u:pw-secret-4@h/db"
    assert Settings(_env_file=None, database_url=url).scrub(f"cannot parse {url}!") == "cannot parse ***!"


def test_a_mistyped_database_url_is_one_line_without_its_password(tmp_path: Path) -> None:
    """libpq quotes a connection string it cannot parse, password and all."""
    url = "postgresql//gdr:pg-pw-Zq81x@127.0.0.1:5432/gdr"  # the ':' after the scheme forgotten
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": url, "GDR_HOME": str(tmp_path / "home")}
    for command in (["db", "status"], ["db", "init"], ["db", "url"], ["ingest"], ["search", "bees"]):
        result = subprocess.run([str(GDR), *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stdout == "" and result.stderr == (
            'error: DATABASE_URL is not a Postgres connection string: missing "=" after "***" in connection info '
            'string\n'), (command, result.stderr)


# --- the pool checks connections before use -----------------------------------------------------------------


def test_a_pooled_connection_killed_while_idle_is_replaced_unseen(settings: Settings, pg_server: str) -> None:
    """A Postgres restart or an idle timeout kills connections in the pool; the next user must not see it."""
    with Database.from_settings(settings) as db:
        assert episode_store.list_episodes(db) == []
        name = psycopg.conninfo.conninfo_to_dict(db.url)["dbname"]
        with psycopg.connect(pg_server, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            assert killed.fetchall()
            deadline = time.monotonic() + 30
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the killed sessions did not end"
                time.sleep(0.05)
        assert episode_store.list_episodes(db) == []
        assert db.pool.get_stats().get("connections_lost", 0) >= 1


# --- a chunk's times -----------------------------------------------------------------------------------------


def compact(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("name", ["phone_call_463s_2spk_nova3_utterances.json", "nasa_eva_170s_3spk_nova2_utterances.json"])
def test_gdr_format_chunks_run_from_their_first_words_start_to_their_last_words_end(tmp_path: Path, name: str) -> None:
    """The chunks tile the raw response's words; each chunk's words are found by their text alone."""
    from typer.testing import CliRunner

    from gent_disagreement_rag.cli import app

    raw = json.loads(deepgram_fixture(name).read_text())
    (tmp_path / "ep.raw.json").write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["format", str(tmp_path / "ep.raw.json"), "--max-tokens", "60"])
    assert result.exit_code == 0, result.output
    chunks = json.loads((tmp_path / "ep.chunks.json").read_text())
    words = raw["results"]["channels"][0]["alternatives"][0]["words"]
    cursor = 0
    for chunk in chunks:
        first, text = cursor, ""
        while text != compact(chunk["text"]):
            assert cursor < len(words) and compact(chunk["text"]).startswith(text), (chunk, text)
            text += compact(words[cursor].get("punctuated_word") or words[cursor]["word"])
            cursor += 1
        assert (chunk["start"], chunk["end"]) == (words[first]["start"], words[cursor - 1]["end"]), chunk
    assert cursor == len(words) and len(chunks) > 5
