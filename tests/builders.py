"""Test data shared by tests and benchmarks; importing it has no side effects (unlike conftest)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StoredSegment:
    """A segment as the store writes it (what `store.SegmentLike` asks of a chunk), for tests and benchmarks."""

    position: int
    speaker: str
    start: float
    end: float
    text: str
    token_count: int


def make_audio(path: Path, seconds: float, frequency: int) -> Path:
    """A small, distinct mp3 (a sine tone): the fake Deepgram answers with a transcript spanning it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"sine=frequency={frequency}:duration={seconds}",
         "-ac", "1", "-ar", "16000", "-b:a", "32k", str(path)],
        check=True,
    )
    return path
