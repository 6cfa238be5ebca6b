"""The local transcription reports its progress from the start: the episode's audio bar is drawn at 0 as soon as
the audio is decoded (loading the model and recognising the first batch take a while), then advances with each
segment Whisper yields, and ends at the audio's length. Real Whisper base on espeak-ng speech."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gent_disagreement_rag.providers.transcribers.local_whisper import LocalWhisperTranscriber, shipped_whisper_base

SPOKEN = ("Welcome back to the show. Today we are talking about bees on the roof. The first hive came in spring. "
          "By summer there were two more, and the neighbours started asking for honey.")


def test_progress_starts_at_zero_and_follows_the_segments(tmp_path: Path) -> None:
    wav = tmp_path / "talk.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), SPOKEN], check=True)
    whisper = LocalWhisperTranscriber(shipped_whisper_base(tmp_path / "models"), models=tmp_path / "models", diarize=False)
    reports: list[tuple[float, float]] = []
    result = whisper.transcribe(wav, lambda done, total: reports.append((done, total)))
    total = result.transcript.duration
    segment_ends = [s["end"] for s in result.raw["segments"]]
    assert reports[0] == (0.0, total), reports  # before any recognition
    assert reports[1:-1] == [(end, total) for end in segment_ends], reports  # then one report per segment yielded
    assert reports[-1] == (total, total)
    assert 0.0 < segment_ends[0] < total
