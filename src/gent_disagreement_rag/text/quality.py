"""Quality gate: does the transcript cover the audio well enough to embed and cite?

Providers occasionally return a transcript that stops early on long files, comes back empty, or
skips a stretch; embedding it would silently lose part of an episode. The checks compare word
timestamps with the audio duration. Thresholds are generous on purpose: real recordings with
long silences (a spacewalk radio loop is ~38 % speech, with 20 s gaps) and music outros must pass.

Failing rules (each also a flag):
- "empty": no words, for audio longer than EMPTY_OK_SECONDS;
- "truncated": coverage (last word end / duration) below MIN_COVERAGE, for audio longer than
  COVERAGE_MIN_DURATION;
- "long_gap": a stretch without words (from the audio start to the first word, or between two
  words) longer than max(LONG_GAP_SECONDS, LONG_GAP_FRACTION of the duration);
- "overrun": words end after the audio by more than OVERRUN_FRACTION + OVERRUN_SECONDS: the
  transcript belongs to another file.
Informative flags: "duration_unknown", "low_speech" (speech_ratio below LOW_SPEECH_RATIO).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from ..errors import QualityGateError
from ..transcript import Transcript

EMPTY_OK_SECONDS = 5.0
COVERAGE_MIN_DURATION = 60.0
MIN_COVERAGE = 0.8
LONG_GAP_SECONDS = 120.0
LONG_GAP_FRACTION = 0.25
OVERRUN_FRACTION = 0.05
OVERRUN_SECONDS = 2.0
LOW_SPEECH_RATIO = 0.2


@dataclass(frozen=True, slots=True)
class QualityReport:
    passed: bool
    reasons: list[str]
    coverage: float | None  # last word end / duration; None when the duration is unknown
    speech_ratio: float | None  # seconds inside words / duration
    longest_gap: float  # seconds without words, from the audio start to the last word
    word_count: int
    duration: float | None
    flags: list[str] = field(default_factory=list)


def check_transcript(transcript: Transcript, audio_duration: float | None) -> QualityReport:
    """Measure coverage and gaps; `audio_duration` None falls back to the provider's duration."""
    duration = audio_duration or transcript.duration or None
    words = transcript.words
    flags: list[str] = []
    reasons: list[str] = []

    def fail(flag: str, reason: str) -> None:
        flags.append(flag)
        reasons.append(reason)

    if duration is None:
        flags.append("duration_unknown")
    last_end = max((w.end for w in words), default=0.0)
    gaps = [words[0].start] + [b.start - a.end for a, b in pairwise(words)] if words else []
    longest_gap = max(gaps, default=0.0)
    coverage = last_end / duration if duration else None
    speech_ratio = transcript.speech_seconds / duration if duration else None

    if not words:
        if duration is None or duration > EMPTY_OK_SECONDS:
            fail("empty", f"no words recognised in {_seconds(duration)} of audio")
        else:
            flags.append("empty")
    if duration and words:
        if duration > COVERAGE_MIN_DURATION and last_end < MIN_COVERAGE * duration:
            fail(
                "truncated",
                f"transcript ends at {last_end:.1f} s of {duration:.1f} s "
                f"(coverage {coverage:.0%} < {MIN_COVERAGE:.0%})",
            )
        if last_end > duration * (1 + OVERRUN_FRACTION) + OVERRUN_SECONDS:
            fail("overrun", f"words run to {last_end:.1f} s but the audio lasts {duration:.1f} s")
    gap_limit = max(LONG_GAP_SECONDS, LONG_GAP_FRACTION * (duration or 0.0))
    if longest_gap > gap_limit:
        fail("long_gap", f"{longest_gap:.1f} s without words (limit {gap_limit:.0f} s)")
    if speech_ratio is not None and words and speech_ratio < LOW_SPEECH_RATIO:
        flags.append("low_speech")

    return QualityReport(
        passed=not reasons,
        reasons=reasons,
        coverage=coverage,
        speech_ratio=speech_ratio,
        longest_gap=longest_gap,
        word_count=len(words),
        duration=duration,
        flags=flags,
    )


def _seconds(duration: float | None) -> str:
    return "an unknown length" if duration is None else f"{duration:.1f} s"


def enforce(report: QualityReport, label: str = "the") -> None:
    """Raise QualityGateError with every failed rule, for `label` (e.g. "episode 12"); whether to skip the
    gate (SKIP_QUALITY_GATE) is the caller's call."""
    if not report.passed:
        raise QualityGateError(
            f"{label} transcript failed the quality gate: {'; '.join(report.reasons)} "
            "(set SKIP_QUALITY_GATE=true to embed it anyway)"
        )
