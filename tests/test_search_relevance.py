"""Search relevance (search/relevance.py): the calibration curves per model and mode, never rising down the
list, the basis it is computed from, a credited reply's relevance. Expected values are worked out by hand."""

from __future__ import annotations

import math

import pytest

from gent_disagreement_rag.search.relevance import LOCAL_MINILM, Calibration, relevance_basis, with_relevance
from gent_disagreement_rag.search.types import Credit, Hit, Mode

pytestmark = pytest.mark.fast  # no Postgres, no Prefect, no Whisper, no subprocess (TESTING.md)


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
