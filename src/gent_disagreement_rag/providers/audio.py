"""An audio file's duration, from its container (PyAV): sizes Deepgram's timeout, prices a dry run,
and is what the cost ledger bills for."""

from __future__ import annotations

import io
from pathlib import Path

import av

FALLBACK_BYTES_PER_SECOND = 16_000  # 128 kbit/s, when the audio cannot be probed for its duration


def audio_seconds(audio: Path | bytes) -> float:
    """Duration from the container, or a bitrate estimate when it cannot be probed (corrupt or unknown
    audio: the transcriber's own error will say so)."""
    try:
        with av.open(str(audio) if isinstance(audio, Path) else io.BytesIO(audio), mode="r") as container:
            if container.duration:
                return container.duration / av.time_base
    except av.FFmpegError:
        pass
    size = audio.stat().st_size if isinstance(audio, Path) else len(audio)
    return size / FALLBACK_BYTES_PER_SECOND


def undecodable(audio: Path) -> str | None:
    """Why the audio file cannot be decoded (None: its first audio frame decodes), said as the local
    transcriber says it; a dry run's forecast of the transcription's failure."""
    try:
        with av.open(str(audio), mode="r") as container:
            if not container.streams.audio:
                return f"{audio}: cannot decode the audio: no audio stream"
            if next(container.decode(audio=0), None) is None:
                return f"{audio}: the file holds no audio samples"
    except (av.FFmpegError, OSError) as exc:
        return f"{audio}: cannot decode the audio: {getattr(exc, 'strerror', None) or exc}"
    return None
