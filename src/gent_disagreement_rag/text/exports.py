"""The per-episode export formats: raw response, chunks JSON, Markdown, SRT and WebVTT, rendered as text.

Rendering is pure; the ingest stage writes the files (as one set, see `files.write_all_atomic`). The raw
provider response is kept verbatim so everything else can be rebuilt offline (`gdr format`).

Captions are built from words, not chunks, so cues stay short: a new cue starts on a change of
speaker, after a pause of CAPTION_PAUSE_SECONDS, or when the text would no longer fit CAPTION_LINES
lines of CAPTION_LINE_CHARS characters (half as many for CJK text) or would last longer than
CAPTION_MAX_SECONDS (only a single long word can). SRT prefixes the speaker's name when the
speaker changes; WebVTT names the speaker of every cue with a voice tag.
"""

from __future__ import annotations

import html
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

from ..transcript import Transcript
from .chunking import Chunk, WordJoiner, is_char_segmented, is_cjk, speaker_turns

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


def _dumps(data: Any, *, indent: int | None = 2) -> str:
    return json.dumps(data, ensure_ascii=False, indent=indent) + "\n"


EXPORT_SUFFIXES = {"raw": ".raw.json", "chunks": ".chunks.json", "markdown": ".md", "srt": ".srt", "vtt": ".vtt"}


def render_exports(
    stem: str,
    raw: dict[str, Any],
    transcript: Transcript,
    chunks: Sequence[Chunk],
    title: str,
    speakers_map: dict[str, str] | None = None,
) -> dict[str, tuple[str, str]]:
    """The five files of one episode, by kind: (file name, text)."""
    cues = caption_cues(transcript, speakers_map)
    texts = {
        # Compact, as the provider sends it: json's C encoder does not indent, and an indented dump of an
        # hour's response is ten times slower (BENCHMARKS.md "Design figures").
        "raw": _dumps(raw, indent=None),
        "chunks": _dumps(chunks_json(chunks)),
        "markdown": to_markdown(transcript, title, speakers_map),
        "srt": to_srt(cues),
        "vtt": to_vtt(cues),
    }
    return {kind: (stem + EXPORT_SUFFIXES[kind], text) for kind, text in texts.items()}
