"""Transcribers: audio file in, provider-neutral transcript (plus the raw response) out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ...settings import Settings
from ...transcript import Transcript, TranscriptionResult
from ..pricing import deepgram_cost

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


class DeepgramTranscribers:
    """Deepgram's pre-recorded API (deepgram.py); a saved response without a `provider` field is one of its."""

    name = "deepgram"
    fleet_limited = True

    def transcriber(self, settings: Settings, at_once: int) -> Transcriber:
        from .deepgram import DeepgramTranscriber

        return DeepgramTranscriber.from_settings(settings)

    def reads(self, raw: Mapping[str, Any]) -> bool:
        return "provider" not in raw or raw["provider"] == self.name

    def parse_raw(self, raw: dict[str, Any]) -> Transcript:
        from .deepgram import parse_deepgram_response

        return parse_deepgram_response(raw)

    def cost(self, settings: Settings, audio_seconds: float) -> float:
        return deepgram_cost(settings, audio_seconds)


class LocalTranscribers:
    """faster-whisper with the base model shipped in pip packages, and the offline diarizer (local_whisper.py)."""

    name = "local"
    fleet_limited = False

    def transcriber(self, settings: Settings, at_once: int) -> Transcriber:
        # Imported only when needed: it brings faster-whisper.
        from .local_whisper import LocalWhisperTranscriber

        return LocalWhisperTranscriber.from_settings(settings, at_once)

    def reads(self, raw: Mapping[str, Any]) -> bool:
        return raw.get("provider") == self.name

    def parse_raw(self, raw: dict[str, Any]) -> Transcript:
        from .local_whisper import parse_local_response

        return parse_local_response(raw)

    def cost(self, settings: Settings, audio_seconds: float) -> float:
        return 0.0
