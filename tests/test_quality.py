"""Quality gate: every real fixture passes; truncated, empty, gapped or mismatched transcripts fail."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gent_disagreement_rag.errors import QualityGateError
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage.database import Database
from gent_disagreement_rag.text.quality import check_transcript, enforce
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import (
    run_ingest,
    tone_catalogue,
)
from tests.support.fakeapi import (
    EMBEDDINGS,
    FakeAPI,
)
from tests.support.transcripts import FIXTURE_FILES, FIXTURES, load_fixture
from tests.support.world import stored_texts, truncated_transcript

fixture_ids = [p.name.split("_")[0] for p in FIXTURE_FILES]


@pytest.mark.fast
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


@pytest.mark.fast
def test_nasa_radio_loop_has_long_silences_but_passes() -> None:
    report = check_transcript(load_fixture(next(p for p in FIXTURE_FILES if p.name.startswith("nasa"))), None)
    assert report.passed and report.longest_gap > 20 and report.speech_ratio is not None and report.speech_ratio < 0.5


@pytest.mark.fast
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=fixture_ids)
def test_transcript_cut_to_its_first_30_percent_fails(path: Path) -> None:
    transcript = load_fixture(path)
    kept = [w for w in transcript.words if w.end <= 0.3 * transcript.duration]
    report = check_transcript(dataclasses.replace(transcript, words=kept), transcript.duration)
    assert not report.passed and "truncated" in report.flags
    with pytest.raises(QualityGateError, match="coverage"):
        enforce(report)


@pytest.mark.fast
@pytest.mark.parametrize("name", ["phone_call_463s_2spk_nova3_utterances", "zh_podcast_1418s_4spk_base_diarized"])
def test_transcript_missing_its_middle_fails(name: str) -> None:
    """30% of the audio without words; the NASA loop is too short for that to exceed 120 s."""
    transcript = load_fixture(FIXTURES / f"{name}.json")
    d = transcript.duration
    kept = [w for w in transcript.words if not 0.35 * d <= w.start <= 0.65 * d]
    report = check_transcript(dataclasses.replace(transcript, words=kept), d)
    assert not report.passed and report.flags == ["long_gap"]


@pytest.mark.fast
def test_empty_transcript_of_real_audio_fails() -> None:
    report = check_transcript(Transcript("deepgram", "nova-3", 0.0, []), 1800.0)
    assert not report.passed and report.flags == ["empty"] and report.word_count == 0
    with pytest.raises(QualityGateError, match="no words"):
        enforce(report)


@pytest.mark.fast
def test_empty_transcript_of_a_blip_passes_with_a_flag() -> None:
    report = check_transcript(Transcript("deepgram", "nova-3", 2.0, []), None)
    assert report.passed and report.flags == ["empty"]


@pytest.mark.fast
def test_empty_transcript_of_unknown_length_fails() -> None:
    report = check_transcript(Transcript("local", "base", 0.0, []), None)
    assert not report.passed and report.flags == ["duration_unknown", "empty"]


@pytest.mark.fast
def test_words_beyond_the_audio_mean_another_file() -> None:
    words = [Word("hi", t, t + 0.5) for t in range(0, 600, 2)]
    report = check_transcript(Transcript("deepgram", "nova-3", 600.0, words), 300.0)
    assert not report.passed and "overrun" in report.flags


@pytest.mark.fast
def test_leading_silence_counts_as_a_gap() -> None:
    words = [Word("hi", t, t + 0.5) for t in range(500, 600)]
    report = check_transcript(Transcript("deepgram", "nova-3", 600.0, words), None)
    assert report.longest_gap == 500 and report.flags == ["long_gap", "low_speech"]


@pytest.mark.fast
def test_short_clip_is_not_held_to_coverage() -> None:
    report = check_transcript(Transcript("deepgram", "nova-3", 50.0, [Word("hi", 1.0, 1.5)]), None)
    assert report.passed and report.flags == ["low_speech"]


def words_until(seconds: float) -> list[Word]:
    """One word per second, each 0.5 s long, the last one ending at `seconds`."""
    return [Word("word", end - 0.5, end) for end in range(1, int(seconds) + 1)] + (
        [Word("last", seconds - 0.5, seconds)] if seconds % 1 else [])


@pytest.mark.fast
@pytest.mark.parametrize(("last_end", "passed"), [(79.5, False), (80.5, True)])
def test_coverage_just_under_80_percent_fails_and_just_over_passes(last_end: float, passed: bool) -> None:
    transcript = Transcript("deepgram", "nova-3", 100.0, words_until(last_end))
    report = check_transcript(transcript, 100.0)
    assert report.passed is passed, report.reasons
    assert report.flags == ([] if passed else ["truncated"])
    assert report.coverage == pytest.approx(last_end / 100)


@pytest.mark.parametrize("skip", [False, True], ids=["gate-on", "SKIP_QUALITY_GATE"])
def test_an_episode_failing_the_quality_gate_is_stored_only_with_skip_quality_gate(
        settings, fake_api: FakeAPI, monkeypatch, prefect_api, skip: bool) -> None:
    [episode] = tone_catalogue(settings, fake_api, monkeypatch, {"G-0": (3, 523)})
    # Words for the first 50 s of 100: coverage 0.5, under the gate's 0.8.
    fake_api.add_audio(settings.audio_dir / "G-0.mp3", response=truncated_transcript("cutoff words here " * 20, 50.0, 100.0))
    if skip:
        monkeypatch.setenv("SKIP_QUALITY_GATE", "true")

    state = run_ingest()

    with Database.from_settings(settings) as db:
        [row] = episode_store.list_episodes(db)
    texts = stored_texts(settings, episode)
    if skip:
        assert state.is_completed() and row.status == "processed", (state.message, row.last_error)
        assert texts and all("cutoff" in t for t in texts)
        assert len(fake_api.requests_to(EMBEDDINGS)) == 1
    else:
        assert state.is_failed() and row.status == "failed"
        assert row.last_error.startswith("QualityGateError: episode G-0: transcript failed the quality gate"), row.last_error
        assert texts == [] and fake_api.requests_to(EMBEDDINGS) == []


def _report(duration: float | None, spans: list[tuple[float, float]]):
    """The gate's report on words at `spans` (start, end) of audio lasting `duration` seconds."""
    words = [Word("w", a, b) for a, b in spans]
    return check_transcript(Transcript("deepgram", "nova-3", 0.0, words), duration)


def _every_second(start: int, stop: int) -> list[tuple[float, float]]:
    return [(float(t), t + 1.0) for t in range(start, stop)]


@pytest.mark.fast
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


@pytest.mark.fast
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


@pytest.mark.fast
def test_empty_transcript_report_measures_nothing_covered() -> None:
    report = _report(30.0, [])
    assert (report.coverage, report.speech_ratio, report.longest_gap, report.word_count) == (0.0, 0.0, 0.0, 0)


@pytest.mark.fast
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
