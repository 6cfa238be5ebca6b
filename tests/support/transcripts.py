"""Transcripts for tests: the real captured Deepgram fixtures and a hypothesis strategy of random ones."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st

from gent_disagreement_rag.providers.transcribers.deepgram import parse_deepgram_response
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import DEEPGRAM_FIXTURE_FILES, DEEPGRAM_FIXTURES_DIR

FIXTURES = DEEPGRAM_FIXTURES_DIR
FIXTURE_FILES = DEEPGRAM_FIXTURE_FILES
_LATIN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz'", min_size=1, max_size=8)
_HAN = st.sampled_from("我你他是的不了在有人這中大為上個國")
_WORD = st.tuples(
    st.one_of(_LATIN, _HAN),
    st.sampled_from(["", "", "", ".", "?", "!", ",", "…", "。", "？"]),  # punctuation, when punctuated
    st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.7, 1.5, -0.2]),  # gap before the word (< 0: overlap)
    st.sampled_from([0.0, 0.1, 0.3, 0.8]),  # duration
    st.sampled_from([None, None, None, None, 0, 1, 2, 3]),  # switch to this speaker
)


@st.composite
def transcripts(draw: st.DrawFn, max_words: int = 80) -> Transcript:
    """Random word sequences: Latin and CJK, punctuated or not, labelled or not, gaps and overlaps."""
    items = draw(st.lists(_WORD, max_size=max_words))
    punctuated, labelled = draw(st.booleans()), draw(st.booleans())
    words, clock, speaker = [], draw(st.sampled_from([0.0, 3.0])), 0
    for text, punct, gap, duration, switch in items:
        start = max(words[-1].start if words else 0.0, clock + gap)
        speaker = speaker if switch is None else switch
        words.append(
            Word(
                text=text,
                start=start,
                end=start + duration,
                speaker=speaker if labelled else None,
                punctuated=(text.capitalize() + punct) if punctuated else None,
            )
        )
        clock = start + duration
    return Transcript(provider="test", model="random", duration=clock, words=words)


def load_fixture(path: Path) -> Transcript:
    return parse_deepgram_response(json.loads(path.read_text(encoding="utf-8")))
