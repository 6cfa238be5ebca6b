"""What is retried and how: transient errors only, Retry-After then 1-2-4-8 s less jitter for provider calls, the
database retry loop's waits, a quality-gate failure never retried."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime

import psycopg
import pytest

from gent_disagreement_rag.errors import (
    DatabaseUnavailableError,
    PermanentProviderError,
    QuotaExhaustedError,
    TransientProviderError,
)
from gent_disagreement_rag.ingest import retry
from gent_disagreement_rag.ingest.retry import is_transient, with_db_retries
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import run_ingest
from tests.support.fakeapi import (
    EMBEDDINGS,
    LISTEN,
    deepgram_error,
    deepgram_response,
)
from tests.support.world import task_run_counts


def test_a_quality_gate_failure_is_not_retried(settings, one_episode, fake_api) -> None:
    """Words up to 50 s of a 100 s recording: the gate fails; retrying the same transcript cannot help."""
    truncated = deepgram_response([(0, "words " * 60), (1, "more words " * 30)], duration=50.0)
    truncated["metadata"]["duration"] = 100.0
    fake_api.add_audio(one_episode, response=truncated)
    started = datetime.now(UTC)

    state = run_ingest()

    assert state.is_failed()
    with Database.from_settings(settings) as db:
        [row] = episode_store.list_episodes(db)
    assert row.status == "failed" and row.last_error.startswith("QualityGateError: ")
    assert task_run_counts("format-Q-0", started) == [1]
    assert len(fake_api.requests_to(LISTEN)) == 1 and fake_api.requests_to(EMBEDDINGS) == []


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


@pytest.mark.fast
@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TransientProviderError("429"), True),
        (PermanentProviderError("400"), False),
        (QuotaExhaustedError("no credit"), False),
        (psycopg.OperationalError("server closed the connection"), True),
        (DatabaseUnavailableError("pool timeout"), True),
        (psycopg.errors.UniqueViolation("duplicate key"), False),  # a psycopg error a retry cannot fix
        (ValueError("bad input"), False),
        (None, False),
    ],
    ids=["transient-provider", "permanent-provider", "quota", "db-operational", "db-unavailable", "db-integrity",
         "value-error", "none"],
)
def test_is_transient_retries_only_what_a_later_try_can_fix(exc, transient) -> None:
    assert is_transient(exc) is transient


class _Flaky:
    """Fails with `errors` in turn, then answers `arg * 2`."""

    __name__ = "flaky_query"

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls: list[tuple] = []

    def __call__(self, *args):
        self.calls.append(args)
        if self.errors:
            raise self.errors.pop(0)
        return args[0] * 2


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The waits with_db_retries asks for, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", waited.append)
    return waited


@pytest.mark.fast
def test_db_retries_wait_1_2_4_8_seconds_then_give_up_with_the_last_error(sleeps, caplog) -> None:
    errors = [psycopg.OperationalError(f"drop {i}") for i in range(5)]
    flaky = _Flaky(*errors)
    with caplog.at_level(logging.INFO, logger=retry.__name__), pytest.raises(psycopg.OperationalError, match="drop 4"):
        with_db_retries(flaky, 21)
    assert flaky.calls == [(21,)] * 5  # the first try and four retries, each with the caller's arguments
    assert sleeps == [1.0, 2.0, 4.0, 8.0]
    assert [r.getMessage() for r in caplog.records] == [
        f"database call flaky_query failed (OperationalError); retrying in {d} s" for d in (1, 2, 4, 8)
    ]


@pytest.mark.fast
def test_db_retries_return_the_answer_of_the_first_try_that_succeeds(sleeps) -> None:
    flaky = _Flaky(DatabaseUnavailableError("restarting"), psycopg.OperationalError("dropped"))
    assert with_db_retries(flaky, 21) == 42
    assert len(flaky.calls) == 3 and sleeps == [1.0, 2.0]
    assert with_db_retries(_Flaky(), 5) == 10 and sleeps == [1.0, 2.0]  # no failure, no wait


@pytest.mark.fast
def test_db_retries_raise_a_permanent_error_at_once(sleeps) -> None:
    flaky = _Flaky(psycopg.errors.UniqueViolation("duplicate key"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        with_db_retries(flaky, 1)
    assert len(flaky.calls) == 1 and sleeps == []


@pytest.mark.fast
def test_db_retries_of_a_callable_without_a_name_log_what_it_is(sleeps, caplog) -> None:
    flaky = _Flaky(psycopg.OperationalError("dropped"))
    call = functools.partial(flaky, 4)
    with caplog.at_level(logging.INFO, logger=retry.__name__):
        assert with_db_retries(call) == 8
    assert [r.getMessage() for r in caplog.records] == [
        f"database call {call!r} failed (OperationalError); retrying in 1 s"]
