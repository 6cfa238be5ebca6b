"""`gdr format`: rebuild an episode's chunks and exports from its saved raw response, with no network,
so chunking can be tuned for free."""

from __future__ import annotations

import json
from pathlib import Path

from ..providers.transcribers import parse_raw
from ..text.chunking import chunk_transcript
from ..text.exports import render_exports
from .stages import write_exports


def _stem(raw_path: Path) -> str:
    name = raw_path.name
    for suffix in (".raw.json", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return raw_path.stem


def reformat_raw(
    raw_path: Path,
    speakers_map: dict[str, str] | None = None,
    out_dir: Path | None = None,
    max_tokens: int | None = None,
) -> dict[str, Path]:
    """Every export of an episode, from its saved raw response; returns the written files by kind."""
    raw = json.loads(raw_path.read_text(encoding="utf-8"))
    transcript = parse_raw(raw)
    chunks = chunk_transcript(transcript, speakers_map, max_tokens=max_tokens)
    stem = _stem(raw_path)
    return write_exports(out_dir or raw_path.parent, render_exports(stem, raw, transcript, chunks, stem, speakers_map))
