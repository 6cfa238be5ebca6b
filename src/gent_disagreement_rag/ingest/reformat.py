"""`gdr format`: rebuild an episode's chunks and exports from its saved raw response, with no network, so
chunking can be tuned for free. The chunks are the ones ingest would make: both build the format stage's
configuration (ingest/config.py) from the same settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..providers.registry import provider_registry
from ..settings import Settings
from ..text.chunking import chunk_transcript
from ..text.exports import render_exports
from ..transcript import Transcript, TranscriptionResult
from .config import FormatConfig
from .stages import write_exports


def parse_raw(raw: dict[str, Any], settings: Settings) -> Transcript:
    """A saved raw response of any registered transcriber, or a publisher's transcript as the transcribe stage
    saved it (`publisher_transcript`: the file verbatim), as a Transcript (local ones carry provider="local")."""
    if "publisher_transcript" in raw:
        from ..sources.publisher import TranscriptLink, parse_transcript

        saved = raw["publisher_transcript"]
        fmt = TranscriptLink(saved["url"], saved["type"]).format
        if fmt is None:
            raise ValueError(f"publisher transcript of type {saved['type']!r} is not one we read")
        return parse_transcript(saved["text"].encode(), fmt, f"transcript {saved['url']}", saved["duration"])
    return provider_registry(settings).parse_raw(raw)


def parsed_again(result: TranscriptionResult, settings: Settings) -> TranscriptionResult:
    """`result` with its transcript parsed from its raw response by today's rules: a result cached by an
    earlier version holds the transcript as that version parsed it (e.g. Whisper's word pieces unjoined)."""
    return TranscriptionResult(transcript=parse_raw(result.raw, settings), raw=result.raw)


def _stem(raw_path: Path) -> str:
    name = raw_path.name
    for suffix in (".raw.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return raw_path.stem


def reformat_raw(
    raw_path: Path,
    settings: Settings,
    speakers_map: dict[str, str] | None = None,
    out_dir: Path | None = None,
) -> dict[str, Path]:
    """Every export of an episode, from its saved raw response, chunked as ingest chunks with these settings
    (CHUNK_MAX_TOKENS, CHUNK_MAX_SECONDS); returns the written files by kind."""
    raw = json.loads(raw_path.read_text(encoding="utf-8"))
    transcript = parse_raw(raw, settings)
    config = FormatConfig.from_settings(settings, speakers_map or {})
    chunks = chunk_transcript(transcript, config.speakers_map, config=config.chunker)
    stem = _stem(raw_path)
    rendered = render_exports(stem, raw, transcript, chunks, stem, config.speakers_map)
    return write_exports(out_dir or raw_path.parent, rendered)
