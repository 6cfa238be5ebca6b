"""Fast tests of the pure logic that `make mutate` mutates (TESTING.md): batching, scrubbing, settings that
decide where secrets and databases are, retry classification, costs, search relevance and result assembly.
Expected values are worked out by hand."""

from __future__ import annotations

import functools
import logging
import math
from datetime import date

import psycopg
import pytest

from gent_disagreement_rag.errors import (
    DatabaseUnavailableError,
    PermanentProviderError,
    QualityGateError,
    QuotaExhaustedError,
    TransientProviderError,
)
from gent_disagreement_rag.ingest import retry
from gent_disagreement_rag.ingest.retry import is_transient, with_db_retries
from gent_disagreement_rag.providers.embedders.openai import pack
from gent_disagreement_rag.providers.pricing import deepgram_cost, openai_cost
from gent_disagreement_rag.providers.registry import provider_registry
from gent_disagreement_rag.search.assembly import assemble, speaker_matches
from gent_disagreement_rag.search.relevance import LOCAL_MINILM, Calibration, relevance_basis, with_relevance
from gent_disagreement_rag.search.replies import is_question
from gent_disagreement_rag.search.statements import SearchRow
from gent_disagreement_rag.search.types import Credit, Hit, Mode
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.costs import CostTotals
from gent_disagreement_rag.text.chunking import (
    Chunk,
    ChunkerConfig,
    WordJoiner,
    chunk_transcript,
    join_words,
    speaker_turns,
)
from gent_disagreement_rag.text.exports import Cue, caption_cues, render_exports, to_srt, to_vtt
from gent_disagreement_rag.text.quality import check_transcript, enforce
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import segment


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


def test_scrub_leaves_text_without_secrets_alone_and_settings_without_secrets_scrub_nothing() -> None:
    assert Settings(_env_file=None, openai_api_key="sk-x1").scrub("no secret here") == "no secret here"
    assert Settings(_env_file=None).scrub("sk-x1") == "sk-x1"
    assert Settings(_env_file=None, openai_api_key="").scrub("a b") == "a b"  # an empty key would match everywhere


def test_legacy_db_variables_make_the_url_and_their_password_is_a_secret() -> None:
    s = Settings(_env_file=None, db_host="db.example", db_port=6543, db_user="ann marie", db_password="p@ss/1",
                 db_name="gent")
    assert s.external_database_url() == "postgresql://ann%20marie:p%40ss%2F1@db.example:6543/gent"
    assert not s.uses_embedded_postgres and s.secrets == ["p@ss/1"]
    assert Settings(_env_file=None, db_host="h").external_database_url() == "postgresql://postgres@h:5432/gent_disagreement"
    assert Settings(_env_file=None).external_database_url() is None and Settings(_env_file=None).uses_embedded_postgres


def test_database_url_wins_over_the_legacy_variables() -> None:
    s = Settings(_env_file=None, database_url="postgresql://x@y/z", db_host="h")
    assert s.external_database_url() == "postgresql://x@y/z" and s.secrets == ["postgresql://x@y/z"]


def test_auto_providers_follow_the_keys() -> None:
    assert (Settings(_env_file=None).resolved_transcriber, Settings(_env_file=None).resolved_embedder) == ("local", "local")
    keyed = Settings(_env_file=None, deepgram_api_key="d", openai_api_key="o")
    assert (keyed.resolved_transcriber, keyed.resolved_embedder) == ("deepgram", "openai")
    forced = Settings(_env_file=None, deepgram_api_key="d", openai_api_key="o", transcriber="local", embedder="local")
    assert (forced.resolved_transcriber, forced.resolved_embedder) == ("local", "local")
    assert Settings(_env_file=None, max_parallel_episodes=5).pool_size == 7


def test_feed_urls_are_a_json_list_or_comma_separated() -> None:
    assert Settings(_env_file=None, feed_url="https://a/x, https://b/y,").feed_url == ["https://a/x", "https://b/y"]
    assert Settings(_env_file=None, feed_url='["https://a/x"]').feed_url == ["https://a/x"]


def test_env_file_and_environment_are_read(tmp_path, monkeypatch) -> None:
    """A developer's `.env` is read; the environment wins over it."""
    env = tmp_path / ".env"
    env.write_text("DB_HOST=from-dotenv\nCHUNK_MAX_TOKENS=99\nSKIP_QUALITY_GATE=true\n")
    monkeypatch.setenv("CHUNK_MAX_TOKENS", "120")
    s = Settings(_env_file=env)
    assert (s.db_host, s.chunk_max_tokens, s.skip_quality_gate) == ("from-dotenv", 120, True)


def test_require_secret_names_the_variable() -> None:
    from gent_disagreement_rag.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY is not set \(needed for EMBEDDER=openai\)$"):
        Settings(_env_file=None, openai_api_key="").require_secret("openai_api_key", "EMBEDDER=openai")
    assert Settings(_env_file=None, openai_api_key="k").require_secret("openai_api_key", "x") == "k"


# --- retry classification and the database retry loop (ingest/retry.py) ---


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


def test_db_retries_return_the_answer_of_the_first_try_that_succeeds(sleeps) -> None:
    flaky = _Flaky(DatabaseUnavailableError("restarting"), psycopg.OperationalError("dropped"))
    assert with_db_retries(flaky, 21) == 42
    assert len(flaky.calls) == 3 and sleeps == [1.0, 2.0]
    assert with_db_retries(_Flaky(), 5) == 10 and sleeps == [1.0, 2.0]  # no failure, no wait


def test_db_retries_raise_a_permanent_error_at_once(sleeps) -> None:
    flaky = _Flaky(psycopg.errors.UniqueViolation("duplicate key"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        with_db_retries(flaky, 1)
    assert len(flaky.calls) == 1 and sleeps == []


# --- cost arithmetic (providers/pricing.py, storage/costs.py) ---


def test_each_provider_costs_its_configured_list_price() -> None:
    s = Settings(_env_file=None, deepgram_price_per_minute=0.5, openai_price_per_million_tokens=2.0)
    providers = provider_registry(s)
    assert providers.cost("deepgram", audio_seconds=90.0, tokens=1_000) == 0.75  # 1.5 minutes at 0.5; tokens are free
    assert providers.cost("openai", audio_seconds=90.0, tokens=250_000) == 0.5  # a quarter of a million tokens at 2.0
    assert providers.cost("local", audio_seconds=3600.0, tokens=10**6) == 0.0
    assert deepgram_cost(s, 60.0) == 0.5 and openai_cost(s, 10**6) == 2.0


def test_cost_totals_json_shows_minutes_and_rounded_dollars() -> None:
    totals = CostTotals(requests=3, audio_seconds=100.0, tokens=1_200, cost_usd=0.0012345678, saved_usd=0.00432109,
                        publisher_transcripts=2)
    assert totals.as_json() == {"requests": 3, "audio_minutes": 1.67, "tokens": 1_200, "cost_usd": 0.001235,
                                "saved_usd": 0.004321, "publisher_transcripts": 2}


# --- search: relevance (search/relevance.py) and hits from the fused rows (search/assembly.py) ---


def _hit(rank: int, score: float, *, vector: float | None = None, text: float | None = None,
         reply_to: Credit | None = None) -> Hit:
    return Hit(rank=rank, score=score, episode_id="E1", title="t", published=None, speaker="A", start=0.0, end=1.0,
               text="x", link=None, position=rank, positions=(rank,), matched_positions=(rank,), segments=(),
               vector_score=vector, text_score=text, reply_to=reply_to)


def test_calibration_is_the_logistic_curve_of_its_score() -> None:
    # 1 / (1 + e^-ln 3) = 3/4 and 1 / (1 + e^ln 3) = 1/4, with intercept + slope * x = ±ln 3.
    assert Calibration(math.log(3) - 1.0, 2.0, "x")(0.5) == pytest.approx(0.75)
    assert Calibration(1.0 - math.log(3), -2.0, "x")(0.5) == pytest.approx(0.25)
    assert Calibration(0.0, 7.0, "x")(0.0) == 0.5


def test_vector_relevance_follows_the_minilm_curve_and_never_rises_down_the_list() -> None:
    # The curve's measured points (module docstring): cosine 0.5 ~ 0.11, 0.6 ~ 0.39, 0.7 ~ 0.77.
    hits = [_hit(1, 0.7, vector=0.7), _hit(2, 0.5, vector=0.5), _hit(3, 0.6, vector=0.6)]
    out = with_relevance(hits, Mode.vector, LOCAL_MINILM)
    assert [h.relevance for h in out] == [pytest.approx(0.772, abs=0.001), pytest.approx(0.109, abs=0.001),
                                          pytest.approx(0.109, abs=0.001)]
    assert [h.rrf for h in out] == [None, None, None]
    assert [h.rank for h in out] == [1, 2, 3] and out[0].score == 0.7  # the rest of each hit is kept


def test_hybrid_relevance_reads_the_cosine_and_keeps_the_rrf() -> None:
    hits = [_hit(1, 1 / 61 + 1 / 62, vector=0.6, text=0.9), _hit(2, 1 / 61, vector=None, text=0.8),
            _hit(3, 1 / 63, vector=0.7)]
    out = with_relevance(hits, Mode.hybrid, LOCAL_MINILM)
    # No cosine (no vector stored for that chunk) reads as relevance 0, and caps everything below it.
    assert [h.relevance for h in out] == [pytest.approx(0.392, abs=0.001), 0.0, 0.0]
    assert [h.rrf for h in out] == [1 / 61 + 1 / 62, 1 / 61, 1 / 63]


def test_text_relevance_reads_ts_rank_cd_on_its_own_curve() -> None:
    # -6 + 20 * 0.3 = 0: one half; -6 + 20 * 0.35 = 1: 1 / (1 + e^-1).
    hits = [_hit(1, 0.35, vector=0.1, text=0.35), _hit(2, 0.3, vector=0.9, text=0.3)]
    out = with_relevance(hits, Mode.text, None)
    assert [h.relevance for h in out] == [round(1 / (1 + math.exp(-1)), 4), 0.5]
    assert [h.rrf for h in out] == [None, None]


def test_uncalibrated_model_relevance_is_the_clamped_cosine_rounded_to_4_places() -> None:
    hits = [_hit(1, 1.2, vector=1.2), _hit(2, 0.123456, vector=0.123456), _hit(3, 0.5, vector=0.5),
            _hit(4, -0.1, vector=-0.1)]
    out = with_relevance(hits, Mode.vector, "openai/text-embedding-3-small@1536")
    assert [h.relevance for h in out] == [1.0, 0.1235, 0.1235, 0.0]
    assert with_relevance([_hit(1, 0.42, vector=0.42)], Mode.vector, None)[0].relevance == 0.42


def test_relevance_basis_names_what_the_relevance_is_computed_from() -> None:
    calibrated = "calibrated on the sample questions: "
    assert relevance_basis(Mode.text, None) == calibrated + "ts_rank_cd"
    assert relevance_basis(Mode.text, LOCAL_MINILM) == calibrated + "ts_rank_cd"
    assert relevance_basis(Mode.hybrid, LOCAL_MINILM) == calibrated + "cosine similarity, local/all-MiniLM-L6-v2@384"
    assert relevance_basis(Mode.vector, "openai/x@8") == "cosine similarity (no calibration measured for openai/x@8)"


# Episodes as the search statement's join sees them: (title, file_name, audio_url) and chunks 0..9, chunk p by
# Ann (even p) or Bo (odd p) from 10p s to 10p + 9.5 s.
_EPISODES = {"E1": ("First", date(2024, 5, 1), "e1.mp3", "https://x/e1.mp3"), "E2": (None, None, "e2.mp3", None),
             "E3": (None, None, None, None)}


def _chunk(position: int) -> tuple:
    return position, "Ann" if position % 2 == 0 else "Bo", 10.0 * position, 10.0 * position + 9.5


def _fused_rows(hits: list[tuple[str, int, float]], context: int,
                questions: frozenset[tuple[str, int]] = frozenset()) -> list[SearchRow]:
    """The statement's rows for `hits` (episode, position, score; best first): one per chunk of each hit's window
    and the chunk after it (a question's reply, replies.py). The chunks at `questions` end with "?"."""
    rows = []
    for n, (episode, position, score) in enumerate(hits, 1):
        title, published, file_name, audio_url = _EPISODES[episode]
        for p in range(max(0, position - context), min(9, position + context + 1) + 1):
            _, speaker, start, end = _chunk(p)
            text = f"{episode.lower()}-{p}" + ("?" if (episode, p) in questions else "")
            rows.append(SearchRow(episode, position, score, vscore=score - 0.5, vrank=n, tscore=score / 10, trank=n + 1,
                                  title=title, published=published, file_name=file_name, audio_url=audio_url,
                                  chunk_position=p, speaker=speaker, start_seconds=start, end_seconds=end, text=text,
                                  chapter=None, vector_candidates=50))
    return rows


def test_assembled_hits_without_context_are_one_chunk_each_with_title_link_and_scores(tmp_path) -> None:
    hits = assemble(_fused_rows([("E1", 3, 0.9), ("E2", 1, 0.8), ("E3", 4, 0.7)], 0), 5, 0, tmp_path)
    assert [(h.rank, h.episode_id, h.title, h.published, h.link) for h in hits] == [
        (1, "E1", "First", date(2024, 5, 1), "https://x/e1.mp3#t=30"),
        (2, "E2", "e2", None, f"{tmp_path}/e2.mp3#t=10"),  # no title: the file's name; no audio URL: the local file
        (3, "E3", "Episode E3", None, None),
    ]
    first = hits[0]
    assert (first.speaker, first.start, first.end, first.text) == ("Bo", 30.0, 39.5, "e1-3")  # no speaker prefix
    assert (first.position, first.positions, first.matched_positions) == (3, (3,), (3,))
    assert (first.score, first.vector_score, first.vector_rank, first.text_score, first.text_rank) == (
        0.9, pytest.approx(0.4), 1, pytest.approx(0.09), 2)
    assert [s.text for s in first.segments] == ["e1-3"]
    assert [h.rank for h in assemble(_fused_rows([("E1", 3, 0.9), ("E2", 1, 0.8)], 0), 1, 0, tmp_path)] == [1]


def test_overlapping_windows_merge_into_one_result_led_by_the_best_hit(tmp_path) -> None:
    rows = _fused_rows([("E1", 5, 0.9), ("E1", 6, 0.8), ("E2", 1, 0.7)], 1)
    merged, other = assemble(rows, 2, 1, tmp_path)
    assert (merged.rank, merged.score, merged.position, merged.speaker) == (1, 0.9, 5, "Bo")  # the best hit's chunk
    assert (merged.positions, merged.matched_positions) == ((4, 5, 6, 7), (5, 6))
    assert (merged.start, merged.end, merged.link) == (40.0, 79.5, "https://x/e1.mp3#t=50")  # plays the cited chunk
    assert merged.text == "Ann: e1-4\nBo: e1-5\nAnn: e1-6\nBo: e1-7"
    assert (other.rank, other.episode_id, other.positions) == (2, "E2", (0, 1, 2))


def test_a_hit_below_the_top_k_does_not_stretch_the_windows_above_it(tmp_path) -> None:
    (only,) = assemble(_fused_rows([("E1", 5, 0.9), ("E1", 6, 0.8), ("E2", 1, 0.7)], 1), 1, 1, tmp_path)
    assert (only.positions, only.matched_positions, only.end) == ((4, 5, 6), (5,), 69.5)


def test_a_hit_bridging_two_windows_merges_all_three(tmp_path) -> None:
    (hit,) = assemble(_fused_rows([("E1", 2, 0.9), ("E1", 8, 0.8), ("E1", 5, 0.7)], 2), 3, 2, tmp_path)
    assert (hit.positions, hit.matched_positions, hit.score, hit.speaker) == (tuple(range(10)), (2, 8, 5), 0.9, "Ann")
    assert [s.position for s in hit.segments] == list(range(10)) and (hit.start, hit.end) == (0.0, 99.5)


def test_windows_merge_when_they_share_a_chunk_not_when_they_only_touch(tmp_path) -> None:
    sharing = assemble(_fused_rows([("E1", 2, 0.9), ("E1", 4, 0.8)], 1), 5, 1, tmp_path)
    assert [h.positions for h in sharing] == [(1, 2, 3, 4, 5)]
    sharing_reversed = assemble(_fused_rows([("E1", 4, 0.9), ("E1", 2, 0.8)], 1), 5, 1, tmp_path)
    assert [h.positions for h in sharing_reversed] == [(1, 2, 3, 4, 5)]
    touching = assemble(_fused_rows([("E1", 2, 0.9), ("E1", 5, 0.8)], 1), 5, 1, tmp_path)
    assert [h.positions for h in touching] == [(1, 2, 3), (4, 5, 6)]
    other_episode = assemble(_fused_rows([("E1", 2, 0.9), ("E2", 2, 0.8)], 1), 5, 1, tmp_path)
    assert [(h.episode_id, h.positions) for h in other_episode] == [("E1", (1, 2, 3)), ("E2", (1, 2, 3))]


@pytest.mark.parametrize(
    ("name", "speaker", "matches"),
    [("priya", "Priya Raman", True), ("Priya Raman", "priya raman", True), (" priya ", "Priya Raman", True),
     ("pri", "Priya Raman", False), ("raman", "Priya Raman", False), ("priya raman", "Priya", False)],
)
def test_speaker_filter_matches_the_whole_name_or_leading_whole_words(name, speaker, matches) -> None:
    assert speaker_matches(name, speaker) is matches


def test_hits_tied_on_score_stay_separate_results(tmp_path) -> None:
    """Hybrid scores tie often (a rank-1 vector-only hit and a rank-1 text-only hit both score 1/61)."""
    hits = assemble(_fused_rows([("E1", 2, 1 / 61), ("E1", 7, 1 / 61)], 0), 5, 0, tmp_path)
    assert [(h.rank, h.position, h.text) for h in hits] == [(1, 2, "e1-2"), (2, 7, "e1-7")]


# --- a question's match credited to its reply (search/replies.py, assembly.py, relevance.py) ---


def _ranked(hits: list[Hit]) -> list[tuple]:
    return [(h.rank, h.episode_id, h.position, h.score, h.speaker, h.text, h.reply_to) for h in hits]


def test_a_questions_reply_ranks_just_above_it_with_the_questions_score_and_credit(tmp_path) -> None:
    hits = assemble(_fused_rows([("E1", 4, 0.9), ("E2", 1, 0.8)], 0, frozenset({("E1", 4)})), 5, 0, tmp_path)
    asked = Credit(4, pytest.approx(0.4), pytest.approx(0.09))  # the question's cosine and ts_rank_cd
    assert _ranked(hits) == [(1, "E1", 5, 0.9, "Bo", "e1-5", asked), (2, "E1", 4, 0.9, "Ann", "e1-4?", None),
                             (3, "E2", 1, 0.8, "Bo", "e2-1", None)]
    reply = hits[0]
    # Not a candidate itself: no scores of its own; the episode's title and link, at the reply's own time.
    assert (reply.vector_score, reply.vector_rank, reply.text_score, reply.text_rank) == (None, None, None, None)
    assert (reply.title, reply.published, reply.link, reply.start, reply.end, reply.positions) == (
        "First", date(2024, 5, 1), "https://x/e1.mp3#t=50", 50.0, 59.5, (5,))
    assert [h.position for h in assemble(_fused_rows([("E1", 4, 0.9)], 0, frozenset({("E1", 4)})), 1, 0,
                                         tmp_path)] == [5]  # the reply takes the only place


def test_a_reply_ranked_below_its_question_moves_above_it_and_keeps_its_own_scores(tmp_path) -> None:
    hits = assemble(_fused_rows([("E1", 4, 0.9), ("E1", 5, 0.6)], 0, frozenset({("E1", 4)})), 5, 0, tmp_path)
    assert _ranked(hits) == [(1, "E1", 5, 0.9, "Bo", "e1-5", Credit(4, pytest.approx(0.4), pytest.approx(0.09))),
                             (2, "E1", 4, 0.9, "Ann", "e1-4?", None)]
    reply = hits[0]
    assert (reply.vector_score, reply.vector_rank, reply.text_score, reply.text_rank) == (
        pytest.approx(0.1), 2, pytest.approx(0.06), 3)
    # A reply already ranked above its question keeps its place and score, uncredited.
    above = assemble(_fused_rows([("E1", 5, 0.95), ("E1", 4, 0.9)], 0, frozenset({("E1", 4)})), 5, 0, tmp_path)
    assert _ranked(above) == [(1, "E1", 5, 0.95, "Bo", "e1-5", None), (2, "E1", 4, 0.9, "Ann", "e1-4?", None)]


def test_a_credited_reply_and_its_question_merge_into_one_result_citing_the_reply(tmp_path) -> None:
    rows = _fused_rows([("E1", 4, 0.9), ("E2", 1, 0.8)], 1, frozenset({("E1", 4)}))
    merged, other = assemble(rows, 2, 1, tmp_path)
    assert (merged.rank, merged.position, merged.score, merged.speaker, merged.reply_to) == (
        1, 5, 0.9, "Bo", Credit(4, pytest.approx(0.4), pytest.approx(0.09)))
    # The reply's window runs to the chunk after the question's window: the statement fetched it.
    assert (merged.positions, merged.matched_positions, merged.link, merged.end) == (
        (3, 4, 5, 6), (5, 4), "https://x/e1.mp3#t=50", 69.5)
    assert merged.text == "Bo: e1-3\nAnn: e1-4?\nBo: e1-5\nAnn: e1-6"
    assert (other.rank, other.episode_id, other.positions, other.reply_to) == (2, "E2", (0, 1, 2), None)


def test_a_reply_by_a_speaker_the_search_filters_out_is_not_credited(tmp_path) -> None:
    rows = _fused_rows([("E1", 4, 0.9)], 0, frozenset({("E1", 4)}))
    assert _ranked(assemble(rows, 5, 0, tmp_path, speaker="ann")) == [(1, "E1", 4, 0.9, "Ann", "e1-4?", None)]


@pytest.mark.parametrize(
    ("text", "question"),
    [("Who led the group at Bell Labs?  ", True), ("他是谁？", True), ("Because of the Nobel? “Really?”", True),
     ("「本当ですか？」", True), ("(really?) ", True),
     ("Shockley did.", False), ("Why? Because.", False)],
)
def test_a_question_ends_with_a_question_mark_before_closing_quotes_and_spaces(text, question) -> None:
    assert is_question(text) is question


def test_a_credited_replys_relevance_is_read_from_the_better_of_its_and_the_questions_score() -> None:
    hits = [_hit(1, 0.7, reply_to=Credit(4, 0.7, 0.35)),  # no scores of its own: the question's
            _hit(2, 0.6, vector=0.6, text=0.4, reply_to=Credit(6, 0.5, 0.3)),  # its own are higher
            _hit(3, 0.5, reply_to=Credit(8, None, None))]  # nothing to read: relevance 0
    # MiniLM curve: cosine 0.7 ~ 0.772, 0.6 ~ 0.392 (the measured points above).
    assert [h.relevance for h in with_relevance(hits, Mode.vector, LOCAL_MINILM)] == [
        pytest.approx(0.772, abs=0.001), pytest.approx(0.392, abs=0.001), 0.0]
    # ts_rank_cd curve -6 + 20x: 0.35 gives 1 / (1 + e^-1), 0.4 gives 1 / (1 + e^-2), capped by the hit above.
    assert [h.relevance for h in with_relevance(hits, Mode.text, None)] == [round(1 / (1 + math.exp(-1)), 4)] * 2 + [
        0.0]


def test_db_retries_of_a_callable_without_a_name_log_what_it_is(sleeps, caplog) -> None:
    flaky = _Flaky(psycopg.OperationalError("dropped"))
    call = functools.partial(flaky, 4)
    with caplog.at_level(logging.INFO, logger=retry.__name__):
        assert with_db_retries(call) == 8
    assert [r.getMessage() for r in caplog.records] == [
        f"database call {call!r} failed (OperationalError); retrying in 1 s"]


def test_scrub_replaces_every_secret_by_three_stars() -> None:
    s = Settings(_env_file=None, openai_api_key="sk-x1", db_password="hunter2", db_host="h")
    assert s.scrub("key sk-x1, password hunter2, again sk-x1") == "key ***, password ***, again ***"


def test_legacy_db_url_quotes_a_slash_in_the_user_and_the_database_name() -> None:
    s = Settings(_env_file=None, db_host="h", db_user="team/ann", db_password="pw", db_name="gent/prod")
    assert s.external_database_url() == "postgresql://team%2Fann:pw@h:5432/gent%2Fprod"
    # A socket directory as the host (as psycopg2's host= took it) is percent-encoded, not read as the path.
    socket = Settings(_env_file=None, db_host="/var/run/postgresql").external_database_url()
    assert socket == "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql:5432/gent_disagreement"


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


# --- the quality gate's thresholds and what it tells the user (text/quality.py) ---


def _report(duration: float | None, spans: list[tuple[float, float]]):
    """The gate's report on words at `spans` (start, end) of audio lasting `duration` seconds."""
    words = [Word("w", a, b) for a, b in spans]
    return check_transcript(Transcript("deepgram", "nova-3", 0.0, words), duration)


def _every_second(start: int, stop: int) -> list[tuple[float, float]]:
    return [(float(t), t + 1.0) for t in range(start, stop)]


@pytest.mark.parametrize(
    ("duration", "spans", "flags"),
    [
        (5.0, [], ["empty"]),  # empty audio of up to 5 s passes
        (60.0, _every_second(0, 30), []),  # audio of up to 60 s is not held to coverage
        (100.0, _every_second(0, 80), []),  # coverage of exactly 80 %
        (100.0, _every_second(0, 107), []),  # words end 5 % + 2 s after the audio: still this file
        (100.0, _every_second(0, 104), []),
        (400.0, _every_second(0, 100) + _every_second(220, 400), []),  # a gap of exactly 120 s
        (100.0, [(float(t), t + 1.0) for t in range(0, 100, 5)], []),  # speech exactly 20 % of the audio
        (100.0, [(float(t), t + 1.0) for t in range(0, 95, 5)] + [(99.0, 99.5)], ["low_speech"]),  # 19.5 %
    ],
    ids=["empty-5s", "short-clip", "coverage-80", "overrun-limit", "overrun-under", "gap-120", "speech-20",
         "speech-below-20"],
)
def test_quality_gate_passes_at_its_thresholds(duration, spans, flags) -> None:
    report = _report(duration, spans)
    assert report.passed and report.reasons == [] and report.flags == flags
    assert report.duration == duration


@pytest.mark.parametrize(
    ("duration", "spans", "reason"),
    [
        (30.0, [], "no words recognised in 30.0 s of audio"),
        (None, [], "no words recognised in an unknown length of audio"),
        (100.0, _every_second(0, 50), "transcript ends at 50.0 s of 100.0 s (coverage 50% < 80%)"),
        (100.0, _every_second(0, 108), "words run to 108.0 s but the audio lasts 100.0 s"),
        (400.0, _every_second(0, 100) + _every_second(221, 400), "121.0 s without words (limit 120 s)"),
        (1000.0, _every_second(0, 100) + _every_second(351, 1000), "251.0 s without words (limit 250 s)"),
    ],
    ids=["empty", "empty-unknown-length", "truncated", "overrun", "gap", "gap-quarter-of-the-audio"],
)
def test_quality_gate_says_why_it_fails(duration, spans, reason) -> None:
    report = _report(duration, spans)
    assert not report.passed and report.reasons == [reason]


def test_empty_transcript_report_measures_nothing_covered() -> None:
    report = _report(30.0, [])
    assert (report.coverage, report.speech_ratio, report.longest_gap, report.word_count) == (0.0, 0.0, 0.0, 0)


def test_quality_gate_error_lists_every_failed_rule_and_the_way_out() -> None:
    report = _report(400.0, _every_second(0, 100) + _every_second(221, 300))
    with pytest.raises(QualityGateError) as raised:
        enforce(report)
    assert str(raised.value) == (
        "the transcript failed the quality gate: transcript ends at 300.0 s of 400.0 s (coverage 75% < 80%); "
        "121.0 s without words (limit 120 s) (set SKIP_QUALITY_GATE=true to embed it anyway)"
    )
    with pytest.raises(QualityGateError, match=r"^episode 12 transcript failed"):
        enforce(report, "episode 12")
    enforce(_report(60.0, _every_second(0, 60)))  # a passing report raises nothing


# --- caption cues, SRT/WebVTT and the export files (text/exports.py) ---


def _spoken(*words: tuple[str, float, float], speaker: int = 0) -> list[Word]:
    return [Word(text, start, end, speaker=speaker) for text, start, end in words]


def _cues(words: list[Word]) -> list[tuple[float, float, str, str, bool]]:
    cues = caption_cues(Transcript("deepgram", "nova-3", 60.0, words), {"0": "Ann", "1": "Bo"})
    return [(c.start, c.end, c.speaker, c.text, c.new_speaker) for c in cues]


def test_a_pause_of_1_5_s_starts_a_new_cue_and_a_cue_ends_with_its_last_word() -> None:
    words = _spoken(("one", 0.0, 0.5), ("two", 0.5, 1.0), ("three", 2.5, 3.0), ("four", 3.0, 3.5), ("five", 4.9, 5.2))
    assert _cues(words) == [(0.0, 1.0, "Ann", "one two", True), (2.5, 5.2, "Ann", "three four five", False)]


def test_a_cue_lasts_at_most_7_seconds() -> None:
    words = _spoken(*((f"w{t}", float(t), t + 1.0) for t in range(10)))
    assert _cues(words) == [(0.0, 7.0, "Ann", "w0 w1 w2 w3 w4 w5 w6", True), (7.0, 10.0, "Ann", "w7 w8 w9", False)]


def test_a_cue_holds_two_full_lines_and_only_its_first_cue_carries_the_speakers_name() -> None:
    """"Ann: " counts against the first cue of a turn only: the second holds 4 words of 20 letters (two lines
    of 41 characters), which the name in front would push to three lines."""
    long = [c * 20 for c in "abcd"]
    words = _spoken(("hello", 0.0, 0.5), *((w, 2.5 + i / 2, 3.0 + i / 2) for i, w in enumerate(long)))
    assert _cues(words) == [(0.0, 0.5, "Ann", "hello", True), (2.5, 4.5, "Ann", " ".join(long), False)]
    cues = caption_cues(Transcript("deepgram", "nova-3", 60.0, words), {"0": "Ann"})
    assert to_srt(cues) == (
        "1\n00:00:00,000 --> 00:00:00,500\nAnn: hello\n\n"
        f"2\n00:00:02,500 --> 00:00:04,500\n{long[0]} {long[1]}\n{long[2]} {long[3]}\n"
    )


def test_character_segmented_cues_join_spelled_out_digits() -> None:
    chars = "我们有300元", "一共20个"
    words = _spoken(*((c, i / 5, i / 5 + 0.2) for i, c in enumerate(chars[0])),
                    *((c, 5 + i / 5, 5.2 + i / 5) for i, c in enumerate(chars[1])))
    assert [text for _, _, _, text, _ in _cues(words)] == ["我们有300元", "一共20个"]


def test_cues_keep_within_two_lines_even_for_words_with_tabs() -> None:
    """A tab is 8 columns wide once wrapped, so a short text with tabs can need more than two lines."""
    words = _spoken(*((f"a\tb\tc\td{i}", float(i), i + 0.5) for i in range(4)))
    srt = to_srt(caption_cues(Transcript("deepgram", "nova-3", 60.0, words), {"0": "Ann"}))
    assert all(len(block.split("\n")) - 2 <= 2 for block in srt.strip("\n").split("\n\n"))


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("中" * 30, ["中" * 21, "中" * 9]),  # CJK characters are twice as wide: 21 a line
        ("a中" * 23, ["a中" * 21, "a中" * 2]),  # half CJK: the full 42
        ("aab中中" * 10, ["aab中中" * 8 + "aa", "b中中" + "aab中中"]),  # 40 % CJK: 42
    ],
    ids=["cjk", "half-cjk", "mostly-latin"],
)
def test_caption_lines_hold_half_as_many_characters_for_mostly_cjk_text(text, lines) -> None:
    assert to_srt([Cue(0.0, 2.0, "A", text, False)]) == "1\n00:00:00,000 --> 00:00:02,000\n" + "\n".join(lines) + "\n"


def test_webvtt_names_each_cues_speaker_and_escapes_only_markup() -> None:
    cues = [Cue(1.5, 3.25, "O'Brien & Co", 'don\'t say <b> & "x"', True),
            Cue(3.25, 6.0, "O'Brien & Co", "abcdefghijklmnopqrst abcdefghijklmnopqrst uvwxyz", False)]
    assert to_vtt(cues) == (
        "WEBVTT\n\n"
        "00:00:01.500 --> 00:00:03.250\n<v O'Brien &amp; Co>don't say &lt;b&gt; &amp; \"x\"\n\n"
        "00:00:03.250 --> 00:00:06.000\n<v O'Brien &amp; Co>abcdefghijklmnopqrst abcdefghijklmnopqrst\nuvwxyz\n"
    )


def test_raw_export_is_the_providers_json_compact_and_chunks_are_indented(tmp_path) -> None:
    transcript = Transcript("deepgram", "nova-3", 1.0, _spoken(("café", 0.0, 1.0)))
    files = render_exports("ep", {"text": "café", "n": [1, 2]}, transcript, [segment(0, "Ann", 0.0, 1.0, "café", 2)], "T")
    assert files["raw"] == ("ep.raw.json", '{"text": "café", "n": [1, 2]}\n')
    assert files["chunks"] == ("ep.chunks.json", '[\n  {\n    "speaker": "Ann",\n    "text": "café",\n    "start": 0.0,\n'
                               '    "end": 1.0,\n    "position": 0,\n    "token_count": 2\n  }\n]\n')


# --- speaker turns and retrieval chunks (text/chunking.py) ---

_NAMES = {"0": "Ann", "1": "Bo"}


def _turn(speaker: int | None, texts: str, start: float, gaps: dict[int, float] | None = None,
          seconds: float = 1.0) -> list[Word]:
    """One speaker's words (`texts` split on spaces), each `seconds` long from `start`, with gaps[i] s of silence
    after word i."""
    words, clock = [], start
    for i, text in enumerate(texts.split()):
        words.append(Word(text, clock, clock + seconds, speaker=speaker))
        clock += seconds + (gaps or {}).get(i, 0.0)
    return words


def _chunked(words: list[Word], max_tokens: int = 100, max_seconds: float = 1000.0) -> list[Chunk]:
    """Chunks under a budget of `max_tokens` words (a token is a word here) and `max_seconds`."""
    return chunk_transcript(Transcript("deepgram", "nova-3", 60.0, words), _NAMES,
                            config=ChunkerConfig(max_tokens=max_tokens, max_seconds=max_seconds),
                            count_tokens=lambda text: len(text.split()))


def _texts(chunks: list[Chunk]) -> list[tuple[str, str]]:
    return [(c.speaker, c.text) for c in chunks]


def _turns(words: list[Word]) -> list[tuple[str, str]]:
    return [(t.speaker, t.text) for t in speaker_turns(Transcript("deepgram", "nova-3", 60.0, words), _NAMES)]


def test_an_unlabelled_word_belongs_to_the_speaker_before_it() -> None:
    words = _turn(0, "Hello", 0.0) + _turn(1, "there", 1.0) + _turn(None, "friend", 2.0)
    assert _turns(words) == [("Ann", "Hello"), ("Bo", "there friend")]


def test_spelled_out_digits_join_only_in_a_transcript_of_mostly_single_cjk_characters() -> None:
    assert _turns(_turn(0, "一 共 2 0 个", 0.0) + _turn(1, "对", 5.0)) == [("Ann", "一共20个"), ("Bo", "对")]
    assert _turns(_turn(0, "我 是 A B", 0.0)) == [("Ann", "我是A B")]  # half the words: not most
    assert _turns(_turn(0, "안녕하세요 여러분", 0.0)) == [("Ann", "안녕하세요 여러분")]  # Hangul is spaced
    assert join_words(["A", "B"]) == "A B" and join_words(["a", "\u2e80"]) == "a\u2e80"  # the first CJK radical
    joiner = WordJoiner()
    assert joiner.text == ""
    joiner.add("A")
    joiner.add("B")
    assert joiner.text == "A B"


def test_a_chunk_ends_at_a_sentence_end_inside_closing_quotes() -> None:
    assert _texts(_chunked(_turn(0, "He said “no.” and left", 0.0), max_tokens=4)) == [
        ("Ann", "He said “no.”"), ("Ann", "and left")]


def test_a_chunk_spans_at_most_max_seconds_of_audio() -> None:
    chunks = _chunked(_turn(0, " ".join(f"w{i}" for i in range(11)), 0.0), max_seconds=10.0)
    assert [(c.start, c.end, c.first_word, c.last_word) for c in chunks] == [(0.0, 10.0, 0, 9), (10.0, 11.0, 10, 10)]


def test_a_back_channel_is_at_most_3_words_lasting_at_most_2_s_and_chunks_list_who_is_heard() -> None:
    backchannel = _turn(1, "yeah yeah", 4.0, seconds=0.5) + [Word("right", 5.0, 6.0, speaker=1)]  # 4.0 to 6.0 s
    words = _turn(0, "so we tried it", 0.0) + backchannel + _turn(0, "and it worked", 6.0)
    assert [(c.speaker, c.speakers, c.text) for c in _chunked(words)] == [
        ("Ann", ("Ann", "Bo"), "so we tried it yeah yeah right and it worked")]
    two = _chunked(_turn(0, "so we tried it", 0.0) + _turn(1, "well it did not work", 4.0))
    assert [(c.speaker, c.speakers, c.start, c.end) for c in two] == [("Ann", ("Ann",), 0.0, 4.0),
                                                                      ("Bo", ("Bo",), 4.0, 9.0)]


def test_a_back_channel_at_the_start_joins_the_next_turn_whose_speaker_wins_a_tie() -> None:
    words = (_turn(1, "Yeah, yeah.", 0.0, seconds=0.5) + _turn(0, "I agree", 1.0, seconds=1.25)
             + _turn(1, "well I disagree with that", 3.5))
    assert [(c.speaker, c.speakers, c.text) for c in _chunked(words)] == [
        ("Ann", ("Bo", "Ann"), "Yeah, yeah. I agree"), ("Bo", ("Bo",), "well I disagree with that")]


def test_no_chunk_ends_between_a_back_channel_and_the_turn_it_starts() -> None:
    words = _turn(1, "Yeah.", 0.0, seconds=0.5) + _turn(0, "I think that is right", 0.5)
    assert _texts(_chunked(words, max_tokens=4)) == [("Ann", "Yeah. I think that"), ("Ann", "is right")]


@pytest.mark.parametrize(
    ("before", "first_turn", "chunks"),
    [
        ([], "a b c.", [("Ann", "a b c. yeah d"), ("Ann", "e f g")]),
        (_turn(1, "so what happened", 0.0), "a b c.",
         [("Bo", "so what happened"), ("Ann", "a b c. yeah d"), ("Ann", "e f g")]),
        ([], "a b. c", [("Ann", "a b."), ("Ann", "c yeah d e f"), ("Ann", "g")]),  # "b." is no glued word
    ],
    ids=["first-turn", "later-turn", "sentence-end-before"],
)
def test_a_turn_interrupted_by_a_back_channel_goes_on_and_keeps_the_back_channel_after_its_sentence(
        before, first_turn, chunks) -> None:
    """Ann's turn, Bo's "yeah", Ann again: one turn of Ann's, cut within 5 words, never right before "yeah"."""
    t = len(before)  # seconds: 1 a word
    words = before + _turn(0, first_turn, t) + _turn(1, "yeah", t + 3.0, seconds=0.5) + _turn(0, "d e f g", t + 3.5)
    assert _texts(_chunked(words, max_tokens=5)) == chunks


def test_without_a_sentence_end_a_chunk_ends_at_its_last_pause_of_0_6_s() -> None:
    words = _turn(0, "w0", 0.0, seconds=0.4) + _turn(0, "w1 w2 w3 w4 w5", 1.0, gaps={2: 0.5})  # 1.0 - 0.4 = 0.6 s
    assert _texts(_chunked(words, max_tokens=5)) == [("Ann", "w0"), ("Ann", "w1 w2 w3 w4 w5")]


@pytest.mark.parametrize(
    ("gaps", "cut_after"),
    [
        ({1: 0.4, 2: 0.2, 3: 0.1}, 2),  # the larger gap after w1 is in the first half of the 6 words that fit
        ({2: 0.104, 4: 0.101}, 4),  # gaps within 10 ms tie: the later one
    ],
    ids=["largest-in-second-half", "ties-within-10-ms"],
)
def test_without_a_sentence_end_or_pause_a_chunk_ends_at_the_largest_gap_in_its_second_half(gaps, cut_after) -> None:
    words = _turn(1, "x y z w", 0.0) + _turn(0, "w0 w1 w2 w3 w4 w5 w6 w7", 4.0, gaps=gaps)
    ann = " ".join(f"w{i}" for i in range(8)).split()
    assert _texts(_chunked(words, max_tokens=6)) == [
        ("Bo", "x y z w"), ("Ann", " ".join(ann[:cut_after + 1])), ("Ann", " ".join(ann[cut_after + 1:]))]


def test_a_run_of_back_channels_is_cut_inside_when_there_is_no_other_place() -> None:
    """Bo's and Ann's one-word back-channels glue every place to cut after "and": the cut goes there anyway,
    never back before the chunk's start (after "see.")."""
    backchannels = [Word(text, 4.0 + i / 2, 4.5 + i / 2, speaker=(i + 1) % 2) for i, text in
                    enumerate(["yes", "ok", "sure", "right"])]  # Bo, Ann, Bo, Ann
    words = _turn(0, "Well I see. and", 0.0) + backchannels
    assert [(c.speaker, c.speakers, c.text) for c in _chunked(words, max_tokens=4)] == [
        ("Ann", ("Ann",), "Well I see."), ("Ann", ("Ann", "Bo"), "and yes ok sure"), ("Ann", ("Ann",), "right")]
