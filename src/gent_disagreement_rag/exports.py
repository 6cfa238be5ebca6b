"""Per-episode files under TRANSCRIPTS_DIR: raw response, chunks JSON, Markdown, SRT and WebVTT.

The raw provider response is kept verbatim so everything else can be rebuilt offline
(`reformat_raw`, behind `gdr format`). Every file is written atomically (temp file in the same
directory, then os.replace), so a crash or a concurrent reader never sees half a file.

Captions are built from words, not chunks, so cues stay short: a new cue starts on a change of
speaker, after a pause of CAPTION_PAUSE_SECONDS, or when the text would no longer fit CAPTION_LINES
lines of CAPTION_LINE_CHARS characters (half as many for CJK text) or would last longer than
CAPTION_MAX_SECONDS (only a single long word can). SRT prefixes the speaker's name when the
speaker changes; WebVTT names the speaker of every cue with a voice tag.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from .chunking import (
    Chunk,
    WordJoiner,
    chunk_transcript,
    is_char_segmented,
    is_cjk,
    speaker_turns,
)
from .transcribers.deepgram import parse_deepgram_response
from .transcript import Transcript

CAPTION_LINE_CHARS = 42
CAPTION_LINES = 2
CAPTION_MAX_SECONDS = 7.0
CAPTION_PAUSE_SECONDS = 1.5


@dataclass(frozen=True, slots=True)
class Cue:
    start: float
    end: float
    speaker: str
    text: str
    new_speaker: bool


def format_timestamp(seconds: float, millis_separator: str | None = None) -> str:
    """HH:MM:SS, plus milliseconds after `millis_separator` ("," for SRT, "." for WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    stamp = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return stamp if millis_separator is None else f"{stamp}{millis_separator}{millis:03d}"


def _wrap(text: str) -> list[str]:
    """Caption lines; CJK characters are twice as wide, so mostly-CJK lines hold half as many."""
    cjk = 0 if text.isascii() else sum(1 for char in text if is_cjk(char))
    width = CAPTION_LINE_CHARS // 2 if cjk * 2 > len(text) else CAPTION_LINE_CHARS
    return textwrap.wrap(text, width) or [text]


def _fits(text: str) -> bool:
    """Whether the text fits the cue's CAPTION_LINES lines (ASCII text no longer than a line needs no wrapping)."""
    return (text.isascii() and len(text) <= CAPTION_LINE_CHARS and "\t" not in text) or len(_wrap(text)) <= CAPTION_LINES


def caption_cues(transcript: Transcript, speakers_map: dict[str, str] | None = None) -> list[Cue]:
    """Short cues from words; a cue never ends after the next one starts."""
    words = transcript.words
    char_segmented = is_char_segmented(words)

    def ends_cue(first: int, i: int, prefix: str, cue: WordJoiner) -> bool:
        nxt = words[i + 1]
        return (
            nxt.start - words[i].end >= CAPTION_PAUSE_SECONDS
            or nxt.end - words[first].start > CAPTION_MAX_SECONDS
            or not _fits(prefix + cue.joined(nxt.display))
        )

    cues: list[Cue] = []
    for turn in speaker_turns(transcript, speakers_map):
        first, cue = turn.first_word, WordJoiner(char_segmented)
        for i in range(turn.first_word, turn.last_word + 1):
            cue.add(words[i].display)
            new_speaker = first == turn.first_word
            if i == turn.last_word or ends_cue(first, i, f"{turn.speaker}: " if new_speaker else "", cue):
                end = max(words[first].start, *(w.end for w in words[first : i + 1]))
                if cue.text:  # words with no text make no (malformed) empty cue
                    cues.append(Cue(words[first].start, end, turn.speaker, cue.text, new_speaker))
                first, cue = i + 1, WordJoiner(char_segmented)
    clamped = [replace(cue, end=max(cue.start, min(cue.end, nxt.start))) for cue, nxt in pairwise(cues)]
    return clamped + cues[-1:]


def to_srt(cues: Sequence[Cue]) -> str:
    blocks = []
    for n, cue in enumerate(cues, 1):
        text = f"{cue.speaker}: {cue.text}" if cue.new_speaker else cue.text
        times = f"{format_timestamp(cue.start, ',')} --> {format_timestamp(cue.end, ',')}"
        blocks.append(f"{n}\n{times}\n" + "\n".join(_wrap(text)) + "\n")
    return "\n".join(blocks)


def to_vtt(cues: Sequence[Cue]) -> str:
    blocks = ["WEBVTT\n"]
    for cue in cues:
        times = f"{format_timestamp(cue.start, '.')} --> {format_timestamp(cue.end, '.')}"
        lines = "\n".join(html.escape(line, quote=False) for line in _wrap(cue.text))
        blocks.append(f"{times}\n<v {html.escape(cue.speaker, quote=False)}>{lines}\n")
    return "\n".join(blocks)


def to_markdown(transcript: Transcript, title: str, speakers_map: dict[str, str] | None = None) -> str:
    """Title, provider line, then one block per speaker turn: **Speaker** [hh:mm:ss] and its text."""
    header = f"# {title}\n\n_{transcript.provider} {transcript.model}, {format_timestamp(transcript.duration)}_\n"
    blocks = [header]
    for turn in speaker_turns(transcript, speakers_map):
        start = format_timestamp(transcript.words[turn.first_word].start)
        blocks.append(f"**{turn.speaker}** [{start}]\n\n{turn.text}\n")
    return "\n".join(blocks)


def chunks_json(chunks: Sequence[Chunk]) -> list[dict[str, Any]]:
    """The original [{"speaker", "text"}] shape, extended with times, position and token count."""
    return [
        {
            "speaker": c.speaker,
            "text": c.text,
            "start": c.start,
            "end": c.end,
            "position": c.position,
            "token_count": c.token_count,
        }
        for c in chunks
    ]


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and os.replace; the old file survives any failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would make exports private to this user
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dumps(data: Any, *, indent: int | None = 2) -> str:
    return json.dumps(data, ensure_ascii=False, indent=indent) + "\n"


def export_episode(
    out_dir: Path,
    stem: str,
    raw: dict[str, Any],
    transcript: Transcript,
    chunks: Sequence[Chunk],
    title: str,
    speakers_map: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write the five files of one episode; returns their paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cues = caption_cues(transcript, speakers_map)
    contents = {
        # Compact, as the provider sends it: an indented dump of an hour's response costs ~0.4 s of pure-Python
        # encoding (json's C encoder does not indent), the compact one a tenth of that.
        "raw": (f"{stem}.raw.json", _dumps(raw, indent=None)),
        "chunks": (f"{stem}.chunks.json", _dumps(chunks_json(chunks))),
        "markdown": (f"{stem}.md", to_markdown(transcript, title, speakers_map)),
        "srt": (f"{stem}.srt", to_srt(cues)),
        "vtt": (f"{stem}.vtt", to_vtt(cues)),
    }
    paths = {}
    for kind, (name, text) in contents.items():
        paths[kind] = out_dir / name
        write_atomic(paths[kind], text)
    return paths


def parse_raw(raw: dict[str, Any]) -> Transcript:
    """A saved raw response of either provider as a Transcript (local ones carry provider="local")."""
    if raw.get("provider") == "local":
        from .transcribers.local_whisper import parse_local_response

        return parse_local_response(raw)
    return parse_deepgram_response(raw)


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
    """Rebuild every export of an episode from its saved raw response, without any network."""
    raw = json.loads(raw_path.read_text(encoding="utf-8"))
    transcript = parse_raw(raw)
    chunks = chunk_transcript(transcript, speakers_map, max_tokens=max_tokens)
    stem = _stem(raw_path)
    return export_episode(out_dir or raw_path.parent, stem, raw, transcript, chunks, stem, speakers_map)
