"""Quality gate: every real fixture passes; truncated, empty, gapped or mismatched transcripts fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gent_disagreement_rag.errors import QualityGateError
from gent_disagreement_rag.text.quality import check_transcript, enforce
from gent_disagreement_rag.transcript import Transcript, Word
from tests.test_chunking import FIXTURE_FILES, FIXTURES, load_fixture

fixture_ids = [p.name.split("_")[0] for p in FIXTURE_FILES]


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=fixture_ids)
def test_real_fixtures_pass(path: Path) -> None:
    """Against the provider's own duration (None: what a caller without a probed duration passes)."""
    transcript = load_fixture(path)
    report = check_transcript(transcript, None)
    assert report.passed, report.reasons
    assert report.reasons == [] and "empty" not in report.flags
    assert report.coverage is not None and report.coverage > 0.9
    assert report.word_count == len(transcript.words)
    enforce(report)


def test_nasa_radio_loop_has_long_silences_but_passes() -> None:
    report = check_transcript(load_fixture(next(p for p in FIXTURE_FILES if p.name.startswith("nasa"))), None)
    assert report.passed and report.longest_gap > 20 and report.speech_ratio is not None and report.speech_ratio < 0.5


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=fixture_ids)
def test_transcript_cut_to_its_first_30_percent_fails(path: Path) -> None:
    transcript = load_fixture(path)
    kept = [w for w in transcript.words if w.end <= 0.3 * transcript.duration]
    report = check_transcript(dataclasses.replace(transcript, words=kept), transcript.duration)
    assert not report.passed and "truncated" in report.flags
    with pytest.raises(QualityGateError, match="coverage"):
        enforce(report)


@pytest.mark.parametrize("name", ["phone_call_463s_2spk_nova3_utterances", "zh_podcast_1418s_4spk_base_diarized"])
def test_transcript_missing_its_middle_fails(name: str) -> None:
    """30% of the audio without words; the NASA loop is too short for that to exceed 120 s."""
    transcript = load_fixture(FIXTURES / f"{name}.json")
    d = transcript.duration
    kept = [w for w in transcript.words if not 0.35 * d <= w.start <= 0.65 * d]
    report = check_transcript(dataclasses.replace(transcript, words=kept), d)
    assert not report.passed and report.flags == ["long_gap"]


def test_empty_transcript_of_real_audio_fails() -> None:
    report = check_transcript(Transcript("deepgram", "nova-3", 0.0, []), 1800.0)
    assert not report.passed and report.flags == ["empty"] and report.word_count == 0
    with pytest.raises(QualityGateError, match="no words"):
        enforce(report)


def test_empty_transcript_of_a_blip_passes_with_a_flag() -> None:
    report = check_transcript(Transcript("deepgram", "nova-3", 2.0, []), None)
    assert report.passed and report.flags == ["empty"]


def test_empty_transcript_of_unknown_length_fails() -> None:
    report = check_transcript(Transcript("local", "base", 0.0, []), None)
    assert not report.passed and report.flags == ["duration_unknown", "empty"]


def test_words_beyond_the_audio_mean_another_file() -> None:
    words = [Word("hi", t, t + 0.5) for t in range(0, 600, 2)]
    report = check_transcript(Transcript("deepgram", "nova-3", 600.0, words), 300.0)
    assert not report.passed and "overrun" in report.flags


def test_leading_silence_counts_as_a_gap() -> None:
    words = [Word("hi", t, t + 0.5) for t in range(500, 600)]
    report = check_transcript(Transcript("deepgram", "nova-3", 600.0, words), None)
    assert report.longest_gap == 500 and report.flags == ["long_gap", "low_speech"]


def test_short_clip_is_not_held_to_coverage() -> None:
    report = check_transcript(Transcript("deepgram", "nova-3", 50.0, [Word("hi", 1.0, 1.5)]), None)
    assert report.passed and report.flags == ["low_speech"]
