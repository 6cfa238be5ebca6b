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

from gent_disagreement_rag.text.chunking import (
    CHUNKER_VERSION,
    DEFAULT_MAX_TOKENS,
    Chunk,
    ChunkerConfig,
    WordJoiner,
    chunk_transcript,
    is_char_segmented,
    join_words,
    speaker_name,
    speaker_turns,
)
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import cl100k_count
from tests.support.transcripts import FIXTURE_FILES, FIXTURES, load_fixture, transcripts

pytestmark = pytest.mark.fast  # no Postgres, no Prefect, no Whisper, no subprocess (TESTING.md)

SPACE_NEXT_TO_CJK = re.compile(r"[\u4e00-\u9fff。？！] | [\u4e00-\u9fff。？！]")
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
