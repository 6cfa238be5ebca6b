"""Chunker invariants on random transcripts (hypothesis) and on every real Deepgram fixture."""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gent_disagreement_rag.providers.transcribers.deepgram import parse_deepgram_response
from gent_disagreement_rag.text.chunking import (
    CHUNKER_VERSION,
    DEFAULT_MAX_TOKENS,
    Chunk,
    ChunkerConfig,
    chunk_transcript,
    is_char_segmented,
    join_words,
    speaker_name,
    speaker_turns,
)
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import DEEPGRAM_FIXTURE_FILES, DEEPGRAM_FIXTURES_DIR, cl100k_count

FIXTURES = DEEPGRAM_FIXTURES_DIR
FIXTURE_FILES = DEEPGRAM_FIXTURE_FILES
SPACE_NEXT_TO_CJK = re.compile(r"[\u4e00-\u9fff。？！] | [\u4e00-\u9fff。？！]")

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


_CJK_CHARS = frozenset("我你他是的不了在有人這中大為上個國。？")  # every CJK character the generator and fixtures' checks use


def expected_text(words: list[Word], all_words: list[Word]) -> str:
    """The chunker's documented spacing, written out here for the generator's alphabet: one space between
    words, none next to a CJK character, none between two single characters of a character-segmented
    transcript (most words single CJK characters)."""
    segmented = 2 * sum(len(w.display.strip()) == 1 and w.display.strip() in _CJK_CHARS for w in all_words) > len(all_words)
    parts = [w.display.strip() for w in words if w.display.strip()]
    text = parts[0] if parts else ""
    for before, word in zip(parts, parts[1:]):
        glued = before[-1] in _CJK_CHARS or word[0] in _CJK_CHARS or (segmented and len(before) == len(word) == 1)
        text += ("" if glued else " ") + word
    return text


def load_fixture(path: Path) -> Transcript:
    return parse_deepgram_response(json.loads(path.read_text(encoding="utf-8")))


def assert_invariants(
    transcript: Transcript, chunks: list[Chunk], max_tokens: int, speakers_map: dict[str, str],
    max_seconds: float = ChunkerConfig().max_seconds,
) -> None:
    words = transcript.words
    assert [c.position for c in chunks] == list(range(len(chunks)))
    # Every word exactly once, in order.
    assert [i for c in chunks for i in range(c.first_word, c.last_word + 1)] == list(range(len(words)))
    for c in chunks:
        span = words[c.first_word : c.last_word + 1]
        assert "".join(c.text.split()) == "".join("".join(w.display.split()) for w in span)  # its words, nothing else
        if set("".join(w.display for w in words)) <= _CJK_CHARS | set("abcdefghijklmnopqrstuvwxyz'.?!,… "):
            assert c.text == expected_text(span, words)
        assert c.token_count == cl100k_count(c.text) <= max_tokens
        assert c.start == span[0].start <= c.end
        assert c.end == max(w.end for w in span) or c.end == c.start  # (a word may end before it starts)
        assert len(span) == 1 or c.end - c.start <= max_seconds
        assert not SPACE_NEXT_TO_CJK.search(c.text)
        names = [speaker_name(w.speaker, speakers_map) for w in span]
        assert set(names) <= set(c.speakers)
        assert c.speaker == speaker_name(c.speaker_id, speakers_map)
        counts = Counter(names)
        assert counts[c.speaker] == max(counts.values())
    assert all(a.start <= b.start for a, b in pairwise(chunks))


@settings(max_examples=80, deadline=None)
@given(transcripts(), st.integers(10, 60))
def test_random_transcripts_keep_the_invariants(transcript: Transcript, max_tokens: int) -> None:
    speakers_map = {"0": "Ricky", "2": "Brendan"}
    chunks = chunk_transcript(transcript, speakers_map, max_tokens=max_tokens)
    assert_invariants(transcript, chunks, max_tokens, speakers_map)
    assert chunk_transcript(transcript, speakers_map, max_tokens=max_tokens) == chunks


@settings(max_examples=60, deadline=None)
@given(transcripts(), st.integers(10, 60), st.sampled_from([3.0, 8.0, 20.0]))
def test_a_seconds_budget_bounds_every_chunk(transcript: Transcript, max_tokens: int, max_seconds: float) -> None:
    speakers_map = {"0": "Ricky", "2": "Brendan"}
    chunks = chunk_transcript(transcript, speakers_map, config=ChunkerConfig(max_tokens=max_tokens, max_seconds=max_seconds))
    assert_invariants(transcript, chunks, max_tokens, speakers_map, max_seconds)


@settings(max_examples=40, deadline=None)
@given(transcripts())
def test_adjacent_chunks_of_one_speaker_would_not_fit_together(transcript: Transcript) -> None:
    chunks = chunk_transcript(transcript, max_tokens=30)
    for a, b in pairwise(chunks):
        if a.speaker == b.speaker:
            merged = transcript.words[a.first_word : b.last_word + 1]
            seconds = max(w.end for w in merged) - merged[0].start
            assert cl100k_count(expected_text(merged, transcript.words)) > 30 or seconds > ChunkerConfig().max_seconds


@settings(max_examples=80, deadline=None)
@given(transcripts())
def test_no_backchannel_is_a_chunk_of_its_own(transcript: Transcript) -> None:
    """Without budget pressure (every text counts 1 token), only a transcript of one turn stands alone."""
    config, words = ChunkerConfig(), transcript.words
    turns = speaker_turns(transcript)
    backchannels = {
        (t.first_word, t.last_word)
        for t in turns
        if t.last_word - t.first_word < config.backchannel_max_words
        and words[t.last_word].end - words[t.first_word].start <= config.backchannel_max_seconds
    }
    chunks = chunk_transcript(transcript, count_tokens=lambda text: 1)
    assert len(turns) < 2 or not backchannels & {(c.first_word, c.last_word) for c in chunks}


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name.split("_")[0])
@pytest.mark.parametrize("max_tokens", [DEFAULT_MAX_TOKENS, 40])
def test_real_fixtures_keep_the_invariants(path: Path, max_tokens: int) -> None:
    transcript = load_fixture(path)
    speakers_map = {"0": "Host", "1": "Guest"}
    chunks = chunk_transcript(transcript, speakers_map, max_tokens=max_tokens)
    assert chunks
    assert_invariants(transcript, chunks, max_tokens, speakers_map)


def test_real_fixtures_are_found() -> None:
    assert len(FIXTURE_FILES) == 3


def test_mandarin_has_no_spaces_and_loses_no_character() -> None:
    transcript = load_fixture(FIXTURES / "zh_podcast_1418s_4spk_base_diarized.json")
    chunks = chunk_transcript(transcript)
    assert is_char_segmented(transcript.words)
    assert all(" " not in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == "".join(w.display for w in transcript.words)
    assert {c.speaker for c in chunks} == {"Speaker 0", "Speaker 1", "Speaker 2", "Speaker 3"}


def test_phone_call_chunks_start_at_sentences() -> None:
    chunks = chunk_transcript(load_fixture(FIXTURES / "phone_call_463s_2spk_nova3_utterances.json"), max_tokens=60)
    assert all(c.text[0].isupper() or c.text[0].isdigit() for c in chunks)
    assert all(c.text[-1] in ".?!" for c in chunks)


def words_of(*turns: tuple[int | None, str], gap: float = 0.1, duration: float = 0.3) -> list[Word]:
    """Words for the given (speaker, 'space separated text') turns, evenly spaced in time."""
    words, clock = [], 0.0
    for speaker, text in turns:
        for token in text.split():
            words.append(Word(token.lower().strip(".?!,"), clock, clock + duration, speaker, token))
            clock += duration + gap
    return words


def transcript_of(words: list[Word]) -> Transcript:
    return Transcript("test", "manual", words[-1].end if words else 0.0, words)


def test_backchannel_joins_the_previous_chunk_and_keeps_its_speaker() -> None:
    words = words_of(
        (0, "So the plan was to ship it on Monday."),
        (1, "Yeah."),
        (0, "But then the build broke and we waited."),
    )
    chunks = chunk_transcript(transcript_of(words), {"0": "Ricky", "1": "Brendan"})
    assert len(chunks) == 1
    assert chunks[0].speaker == "Ricky" and chunks[0].speaker_id == 0
    assert chunks[0].speakers == ("Ricky", "Brendan")
    assert "Monday. Yeah. But then" in chunks[0].text


def test_backchannel_stays_with_the_sentence_before_it_when_the_budget_splits() -> None:
    words = words_of(
        (0, "One two three four five six. Seven eight nine ten eleven twelve."),
        (1, "Mh."),
        (0, "Thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty."),
    )
    chunks = chunk_transcript(transcript_of(words), max_tokens=16)
    assert [c.text for c in chunks] == [
        "One two three four five six.",
        "Seven eight nine ten eleven twelve. Mh.",
        "Thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty.",
    ]
    assert [c.speaker for c in chunks] == ["Speaker 0"] * 3
    assert chunks[1].speakers == ("Speaker 0", "Speaker 1")


def test_leading_backchannel_joins_the_next_turn() -> None:
    words = words_of((1, "Right."), (0, "Welcome back to the show, today we talk about trains."))
    chunks = chunk_transcript(transcript_of(words), {"0": "Ricky"})
    assert len(chunks) == 1
    assert chunks[0].speaker == "Ricky" and chunks[0].speakers == ("Speaker 1", "Ricky")


def test_real_short_answer_is_a_turn_of_its_own() -> None:
    words = words_of(
        (0, "What did you think of the second half of the book?"),
        (1, "Honestly I thought it dragged on far too long."),
    )
    chunks = chunk_transcript(transcript_of(words))
    assert [c.speaker_id for c in chunks] == [0, 1]


def test_long_backchannel_by_time_is_not_merged() -> None:
    words = words_of((0, "Are you there?"), (1, "Yes."), gap=0.1, duration=2.5)
    assert [c.speaker_id for c in chunk_transcript(transcript_of(words))] == [0, 1]


def test_only_backchannels_give_one_chunk() -> None:
    words = words_of((0, "Yeah."), (1, "Mh."), (0, "Right."))
    chunks = chunk_transcript(transcript_of(words))
    assert len(chunks) == 1 and chunks[0].speaker_id == 0 and chunks[0].speakers == ("Speaker 0", "Speaker 1")


def test_without_punctuation_it_splits_at_pauses() -> None:
    starts = [i * 0.5 + (1.0 if i > 14 else 0.0) for i in range(40)]  # a 1.1 s pause after word 14
    words = [Word("word", start, start + 0.4) for start in starts]
    chunks = chunk_transcript(transcript_of(words), max_tokens=25)
    assert [(c.first_word, c.last_word) for c in chunks] == [(0, 14), (15, 39)]


def test_without_punctuation_or_pauses_it_splits_between_words() -> None:
    words = [Word("word", i * 0.3, i * 0.3 + 0.3) for i in range(25)]
    chunks = chunk_transcript(transcript_of(words), max_tokens=10)
    assert [(c.first_word, c.last_word) for c in chunks] == [(0, 9), (10, 19), (20, 24)]


def test_a_long_sentence_is_split_at_its_largest_pause() -> None:
    starts = [i * 0.4 + (0.4 if i >= 12 else 0.0) for i in range(20)]  # gaps 0.1 s, 0.5 s before word 12
    words = [Word(t, start, start + 0.3, 0, t) for t, start in zip("abcdefghijklmnopqrs", starts)]
    words.append(Word("t", 8.4, 8.7, 0, "t."))
    chunks = chunk_transcript(transcript_of(words), max_tokens=16)
    assert chunks[0].last_word == 11


def test_speaker_names_come_from_the_map_with_fallbacks() -> None:
    words = words_of(
        (0, "Hello there and welcome everyone."), (1, "Hi Ricky, great to be here."), (2, "And hello from me too.")
    )
    chunks = chunk_transcript(transcript_of(words), {"0": "Ricky", "1": "Brendan"})
    assert [c.speaker for c in chunks] == ["Ricky", "Brendan", "Speaker 2"]


def test_unlabelled_transcript_is_one_speaker() -> None:
    words = words_of((None, "No diarization here. Just one voice talking."))
    assert [c.speaker for c in chunk_transcript(transcript_of(words), {"0": "Ricky"})] == ["Ricky"]
    chunks = chunk_transcript(transcript_of(words))
    assert [(c.speaker, c.speaker_id) for c in chunks] == [("Speaker 0", None)]


def test_unlabelled_words_inside_a_labelled_transcript_take_the_previous_speaker() -> None:
    words = words_of((None, "Well"), (1, "I think so, but"), (None, "not today."), (0, "Fine by me then, let us wait."))
    assert [(t.speaker_id, t.first_word, t.last_word) for t in speaker_turns(transcript_of(words))] == [
        (1, 0, 6),
        (0, 7, 13),
    ]


def test_empty_transcript_gives_no_chunks() -> None:
    empty = Transcript("deepgram", "nova-3", 120.0, [])

    def never(text: str) -> int:
        raise AssertionError("no text to count")

    assert chunk_transcript(empty, {"0": "Ricky"}, count_tokens=never) == []


def test_custom_token_counter_is_used() -> None:
    words = words_of((0, "one two three four five six seven eight nine ten"))
    chunks = chunk_transcript(transcript_of(words), max_tokens=3, count_tokens=lambda text: len(text.split()))
    assert [c.token_count for c in chunks] == [3, 3, 3, 1]


def test_join_words_decides_spaces_per_boundary() -> None:
    assert join_words(["Hello", "world."]) == "Hello world."
    assert join_words(["我", "喜欢", "iPhone", "和", "你", "。"]) == "我喜欢iPhone和你。"
    assert join_words([" leading", "", "space "]) == "leading space"
    assert join_words(list("有covid19的"), char_segmented=True) == "有covid19的"
    assert join_words(["new", "york", "我"], char_segmented=True) == "new york我"


def test_config_is_a_cache_key() -> None:
    key = ChunkerConfig().cache_key()
    assert key["chunker_version"] == CHUNKER_VERSION
    assert key["max_tokens"] == DEFAULT_MAX_TOKENS == 250
    assert set(key) == {
        "chunker_version",
        "max_tokens",
        "max_seconds",
        "pause_seconds",
        "backchannel_max_words",
        "backchannel_max_seconds",
    }
    assert ChunkerConfig(max_tokens=100).cache_key() != key
    json.dumps(key)


def test_a_monologue_is_cut_into_citable_chunks_of_at_most_30_seconds() -> None:
    """The phone call's words as if one person said them all: the token budget alone gives minute-long chunks."""
    call = load_fixture(FIXTURES / "phone_call_463s_2spk_nova3_utterances.json")
    monologue = Transcript(call.provider, call.model, call.duration,
                           [Word(w.text, w.start, w.end, 0, w.punctuated, w.confidence) for w in call.words])
    chunks = chunk_transcript(monologue)
    assert_invariants(monologue, chunks, DEFAULT_MAX_TOKENS, {})
    lengths = [c.end - c.start for c in chunks]
    assert max(lengths) <= 30 and sum(lengths) / len(lengths) > 20  # cut by time, not into slivers
    by_tokens = chunk_transcript(monologue, config=ChunkerConfig(max_seconds=3600))
    assert max(c.end - c.start for c in by_tokens) > 60
