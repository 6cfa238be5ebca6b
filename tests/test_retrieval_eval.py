"""The retrieval evaluation's questions, and a regression subset of it that needs no speech recognition.

The subset is the real Deepgram phone call (16 questions): today's chunks, the offline MiniLM and cosine
ranking with search's second stage (replies first), as bench/retrieval_eval.py ranks them. Its floors are the
figures measured there less one question (1/16), so a change that costs one question still passes and one that
costs two does not; the second stage must keep at least 3 of the 4 questions it wins at 1 over cosine alone.
"""

from __future__ import annotations

import json

from bench.retrieval_eval import (
    PHONE_CALL,
    answer_span,
    chunks,
    cosine_ranks,
    load_questions,
    metrics,
)

from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.providers.transcribers.deepgram import parse_deepgram_response

QUESTIONS = load_questions()
HIT1_FLOOR = 9 / 16  # measured 10/16 (cosine alone: 6/16)
HIT3_FLOOR = 12 / 16  # measured 13/16 (cosine alone: 10/16)
CALL = [q for q in QUESTIONS if q["episode"] == "phone_call"]


def test_the_evaluation_spans_are_the_ground_truth() -> None:
    assert len(QUESTIONS) >= 40 and len({q["episode"] for q in QUESTIONS}) >= 3
    for q in QUESTIONS:
        assert answer_span(q) == (q["start"], q["end"]), q["id"]


def test_phone_call_subset_holds_its_figures() -> None:
    transcript = parse_deepgram_response(json.loads(PHONE_CALL.read_text()))
    units, chunk_list = chunks({"phone_call": (transcript, {})})
    embedder = LocalMiniLMEmbedder()
    today = metrics(cosine_ranks(units, CALL, embedder, replies=chunk_list), units)
    cosine_alone = metrics(cosine_ranks(units, CALL, embedder), units)
    assert len(CALL) == 16
    assert today["hit@1"] >= HIT1_FLOOR
    assert today["hit@3"] >= HIT3_FLOOR
    assert (today["hit@1"] - cosine_alone["hit@1"]) * 16 >= 3
