"""Transcribers: audio file in, provider-neutral transcript (plus the raw response) out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ...settings import Settings
from ...transcript import Transcript, TranscriptionResult

AudioProgress = Callable[[float, float], None]


class Transcriber(Protocol):
    provider: str
    model: str
    uses_speaker_count: bool  # whether `speakers` changes the output (then it is part of the cache key)

    def options(self) -> dict[str, Any]:
        """Everything besides the audio that determines the output (part of the cache key)."""
        ...

    def transcribe(self, audio_path: Path, progress: AudioProgress | None = None, speakers: int | None = None
                   ) -> TranscriptionResult:
        """`progress(seconds_done, seconds_total)` is called as the audio is worked through (at least at the end);
        `speakers` is how many voices the episode has, when known (a hint: a provider may find its own)."""
        ...


def make_transcriber(settings: Settings, at_once: int = 1) -> Transcriber:
    """The transcriber the settings choose (TRANSCRIBER=auto: Deepgram when its key is set), for a run that
    transcribes `at_once` episodes at the same time (the local one shares the cores out between them)."""
    if settings.resolved_transcriber == "deepgram":
        from .deepgram import DeepgramTranscriber

        return DeepgramTranscriber.from_settings(settings)
    from .local_whisper import LocalWhisperTranscriber

    return LocalWhisperTranscriber.from_settings(settings, at_once)


def parse_raw(raw: dict[str, Any]) -> Transcript:
    """A saved raw response of either provider as a Transcript, by today's rules (local ones carry
    provider="local"). Each parser is imported only when needed: the local one brings faster-whisper."""
    if raw.get("provider") == "local":
        from .local_whisper import parse_local_response

        return parse_local_response(raw)
    from .deepgram import parse_deepgram_response

    return parse_deepgram_response(raw)

