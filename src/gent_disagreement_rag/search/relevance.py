"""Relevance: what a reader can interpret and threshold, next to each mode's raw ranking value.

A hit's relevance is an estimate of the probability that it answers the question: a logistic curve of
the cosine similarity between the query and the hit's chunk (vector and hybrid mode), or of its
ts_rank_cd (text mode), or of the question's it answers when it is a credited reply and that is higher,
fitted on the sample questions (tests/search_questions.json: 12 questions, their top 10 hits each, a hit
"answers" when it overlaps the spoken answer; refitted and checked by tests/test_search.py).
Measured with all-MiniLM-L6-v2: a cosine of 0.5 means ~0.11, 0.6 ~0.39,
0.7 ~0.77. For a model without a measured curve the relevance is the cosine similarity itself, and
`SearchResults.relevance_basis` says so.

Down the returned list the relevance never increases: a hit is given at most the relevance of the
hits ranked above it (hybrid ranks by RRF, which can put a lower cosine first). So the relevance
is monotone with the ranking, does not depend on k, and `min_score` cuts the list, never reorders it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..providers.embedders import LOCAL_MINILM_MODEL
from .types import Hit, Mode

LOCAL_MINILM = str(LOCAL_MINILM_MODEL)


@dataclass(frozen=True, slots=True)
class Calibration:
    """P(answers) = 1 / (1 + exp(-(intercept + slope * x))), x the raw score it was fitted on."""

    intercept: float
    slope: float
    measured_on: str

    def __call__(self, x: float) -> float:
        return 1.0 / (1.0 + math.exp(-(self.intercept + self.slope * x)))


# Fitted by tests/test_search.py::test_relevance_calibration_matches_the_sample_questions (which fails
# if a refit drifts from these).
VECTOR_CALIBRATIONS = {LOCAL_MINILM: Calibration(-10.4, 16.6, f"cosine similarity, {LOCAL_MINILM}")}
TEXT_CALIBRATION = Calibration(-6.0, 20.0, "ts_rank_cd")


def _calibration(mode: Mode, model_id: str | None) -> Calibration | None:
    """The curve the relevance is read from; None: the cosine similarity itself."""
    return TEXT_CALIBRATION if mode is Mode.text else VECTOR_CALIBRATIONS.get(model_id or "")


def relevance_basis(mode: Mode, model_id: str | None) -> str:
    """What the relevance of a search in `mode` over `model_id`'s vectors is computed from."""
    calibration = _calibration(mode, model_id)
    if calibration is None:
        return f"cosine similarity (no calibration measured for {model_id})"
    return f"calibrated on the sample questions: {calibration.measured_on}"


def evidence(hit: Hit, mode: Mode) -> float | None:
    """The raw score a hit's relevance is read from: its own, or the question's it answers when higher
    (a credited reply, see replies.py)."""
    own = hit.text_score if mode is Mode.text else hit.vector_score
    if hit.reply_to is None:
        return own
    asked = hit.reply_to.text_score if mode is Mode.text else hit.reply_to.vector_score
    return max((x for x in (own, asked) if x is not None), default=None)


def with_relevance(hits: Sequence[Hit], mode: Mode, model_id: str | None) -> list[Hit]:
    """The hits with their relevance set, non-increasing down the list (and, in hybrid, `rrf`)."""
    out: list[Hit] = []
    ceiling = 1.0  # also the cap of an uncalibrated cosine, which float rounding can put above 1
    calibration = _calibration(mode, model_id)
    for h in hits:
        x = evidence(h, mode)
        if x is None:
            raw = 0.0
        elif calibration is None:
            raw = max(0.0, x)
        else:
            raw = calibration(x)
        ceiling = min(ceiling, raw)
        out.append(dataclasses.replace(h, relevance=round(ceiling, 4), rrf=h.score if mode is Mode.hybrid else None))
    return out
