"""The publisher's own transcript and chapters, as a Podcasting 2.0 feed links them.

`<podcast:transcript url type language rel>` and `<podcast:chapters url type>` (podcastindex.org namespace).
A transcript becomes the same provider-neutral Transcript the transcribers return, so every later stage
is unchanged: its cues' words with times interpolated inside each cue (by characters, the way a reader
would time them), and the transcript's own speaker names (`<v Name>`, a `Name:` lead-in, JSON `speaker`).

Formats, best first: the Podcasting 2.0 JSON transcript, WebVTT, SRT, and HTML only when nothing else is
offered: it has no times, so its words are spread evenly over the audio (each paragraph a turn, a `Name:`
lead-in its speaker), and the episode's note says its times are estimated.

A transcript that cannot be parsed raises `PublisherFileError`, naming the URL and what is wrong: a reason to
transcribe the episode, never a failure of it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from enum import StrEnum
from html.parser import HTMLParser
from typing import Any, TypeVar

import webvtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from webvtt.errors import MalformedFileError

from ..transcript import Transcript, Word


class TranscriptFormat(StrEnum):
    """The MIME types of `podcast:transcript` we read, best first (see `choose_transcript`)."""

    JSON = "application/json"
    VTT = "text/vtt"
    SRT = "application/x-subrip"
    HTML = "text/html"


# What the file is saved as (content-addressed under GDR_HOME/publisher) and how it is parsed.
SUFFIXES = {TranscriptFormat.JSON: ".json", TranscriptFormat.VTT: ".vtt", TranscriptFormat.SRT: ".srt",
            TranscriptFormat.HTML: ".html"}
TIMED_FORMATS = (TranscriptFormat.JSON, TranscriptFormat.VTT, TranscriptFormat.SRT)  # HTML: only when alone
# Also seen in the wild for SRT: the namespace's own examples name both.
TYPE_ALIASES = {"application/srt": TranscriptFormat.SRT, "text/srt": TranscriptFormat.SRT}
CHAPTERS_TYPE = "application/json+chapters"
MAX_PUBLISHER_BYTES = 20 << 20  # a 3-hour episode's VTT is ~300 kB: anything near this is not a transcript
PUBLISHER = "publisher"  # the Transcript's provider, and the cost ledger's


_Model = TypeVar("_Model", bound=BaseModel)


class PublisherFileError(Exception):
    """A transcript or chapters file that cannot be used; the message names the URL and what is wrong."""


@dataclass(frozen=True, slots=True)
class TranscriptLink:
    url: str
    type: str
    language: str | None = None
    rel: str | None = None

    @property
    def format(self) -> TranscriptFormat | None:
        kind = self.type.split(";", 1)[0].strip().lower()
        try:
            return TranscriptFormat(kind)
        except ValueError:
            return TYPE_ALIASES.get(kind)

    def as_json(self) -> dict[str, Any]:
        return {"url": self.url, "type": self.type, "language": self.language, "rel": self.rel}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TranscriptLink:
        return cls(data["url"], data["type"], data.get("language"), data.get("rel"))


@dataclass(frozen=True, slots=True)
class TranscriptChoice:
    """The link to read (None: transcribe), and why not when there is one to say."""

    link: TranscriptLink | None
    note: str | None = None


HTML_NOTE = "the feed offers only an HTML transcript, which has no times: its words are spread evenly over the audio"


def choose_transcript(links: list[TranscriptLink] | tuple[TranscriptLink, ...]) -> TranscriptChoice:
    """The best timed transcript the feed offers; an HTML one only when there is no other, with a note saying so."""
    rank = {fmt: i for i, fmt in enumerate(TIMED_FORMATS)}
    timed = sorted((link for link in links if link.format in rank),
                   key=lambda link: rank[link.format] if link.format else len(rank))
    if timed:
        return TranscriptChoice(timed[0])
    html = [link for link in links if link.format is TranscriptFormat.HTML]
    if html:
        return TranscriptChoice(html[0], HTML_NOTE)
    if links:
        kinds = ", ".join(sorted({link.type for link in links}))
        return TranscriptChoice(None, f"the feed's transcript type ({kinds}) is not one we read: transcribed instead")
    return TranscriptChoice(None)


# --- transcripts --------------------------------------------------------------------------------


class _JsonSegment(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    speaker: str | None = None
    start: float = Field(alias="startTime", ge=0)
    end: float = Field(alias="endTime", ge=0)
    body: str


class _JsonTranscript(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str | None = None
    segments: list[_JsonSegment]


@dataclass(frozen=True, slots=True)
class _Cue:
    start: float
    end: float
    speaker: str | None
    text: str


# A cue that opens with a name and a colon ("Ann Lee: Welcome"): how SRT files (no voice tags) name speakers.
_LEAD_IN = re.compile(r"^\s*([A-Z][\w.'’-]*(?: [A-Z][\w.'’-]*){0,3}):\s+(.*)$", re.DOTALL)
_TAGS = re.compile(r"<[^>]*>")


def parse_transcript(data: bytes, fmt: TranscriptFormat, label: str, duration: float) -> Transcript:
    """The publisher's file as a Transcript of `duration` seconds (the audio's); raises PublisherFileError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PublisherFileError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if fmt is TranscriptFormat.JSON:
        cues = _json_cues(text, label)
    elif fmt in (TranscriptFormat.VTT, TranscriptFormat.SRT):
        cues = _caption_cues(text, fmt, label)
    else:
        cues = _html_cues(text, duration)
    cues = [c for c in cues if c.text.strip()]
    if not cues:
        raise PublisherFileError(f"{label}: no cues with text")
    return _transcript(cues, fmt, duration)


def _json_cues(text: str, label: str) -> list[_Cue]:
    parsed = _validated(_JsonTranscript, text, label)
    return [_Cue(s.start, max(s.start, s.end), s.speaker.strip() if s.speaker else None, s.body) for s in parsed.segments]


def _validated(model: type[_Model], data: str | bytes, label: str) -> _Model:
    """The JSON file as `model`, or a PublisherFileError naming its first bad field (`segments.3.startTime`)."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        raise PublisherFileError(f"{label}: field {where}: {error['msg']}") from None


def _caption_cues(text: str, fmt: TranscriptFormat, label: str) -> list[_Cue]:
    try:
        captions = webvtt.from_buffer(io.StringIO(text), format="srt" if fmt is TranscriptFormat.SRT else "vtt")
    except MalformedFileError as exc:
        raise PublisherFileError(f"{label}: not valid {fmt.name} ({exc})") from None
    cues = []
    for caption in captions:
        body = " ".join(caption.text.split())
        speaker = caption.voice
        if speaker is None and (lead := _LEAD_IN.match(body)):
            speaker, body = lead[1], lead[2]
        cues.append(_Cue(_seconds(caption.start_time), _seconds(caption.end_time), speaker, _TAGS.sub("", body)))
    return cues


class _Paragraphs(HTMLParser):
    """The text of each block element (p, div, li, br ends a block). Headings, the page's title, scripts and
    styles are left out: they are not what anyone said."""

    BLOCKS = frozenset({"p", "div", "li", "br", "tr", "section", "article", "blockquote"})
    SKIPPED = frozenset({"script", "style", "title", "h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._current: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self._skipping += 1
        elif tag in self.BLOCKS:
            self._end_block()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.BLOCKS:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._current.append(data)

    def _end_block(self) -> None:
        text = " ".join("".join(self._current).split())
        if text:
            self.blocks.append(text)
        self._current = []


def _html_cues(text: str, duration: float) -> list[_Cue]:
    """Paragraphs as cues whose times share the audio out by their length (HTML has none of its own)."""
    parser = _Paragraphs()
    parser.feed(text)
    parser.close()
    parser._end_block()
    turns = []
    for block in parser.blocks:
        lead = _LEAD_IN.match(block)
        turns.append((lead[1], lead[2]) if lead else (None, block))
    total = sum(len(body) + 1 for _, body in turns) or 1
    cues, at = [], 0
    for speaker, body in turns:
        start = duration * at / total
        at += len(body) + 1
        cues.append(_Cue(start, duration * at / total, speaker, body))
    return cues


def _seconds(stamp: Any) -> float:
    hours, minutes, seconds, milliseconds = stamp.to_tuple()
    return hours * 3600 + minutes * 60 + seconds + milliseconds / 1000


def _transcript(cues: list[_Cue], fmt: TranscriptFormat, duration: float) -> Transcript:
    """Words timed inside their cue by character position; speakers numbered in order of appearance, named."""
    ids: dict[str, int] = {}
    words: list[Word] = []
    for cue in cues:
        speaker = ids.setdefault(cue.speaker, len(ids)) if cue.speaker else None
        tokens = cue.text.split()
        span, chars = cue.end - cue.start, sum(len(t) + 1 for t in tokens)
        at = 0
        for token in tokens:
            start = cue.start + span * at / chars
            at += len(token) + 1
            words.append(Word(token, round(start, 3), round(cue.start + span * at / chars, 3), speaker))
    return Transcript(
        provider=PUBLISHER, model=fmt.value, duration=duration, words=words,
        speaker_names={str(i): name for name, i in ids.items()} or None,
    )


# --- chapters -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chapter:
    position: int
    start: float
    end: float | None  # None: until the next chapter (or the end)
    title: str
    url: str | None = None


class _JsonChapter(BaseModel):
    model_config = ConfigDict(extra="ignore")
    startTime: float = Field(ge=0)
    endTime: float | None = Field(None, ge=0)
    title: str = ""
    url: str | None = None
    toc: bool = True  # toc=false marks a chapter that is not part of the table of contents (an ad, an image)


class _JsonChapters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str | None = None
    chapters: list[_JsonChapter]


def parse_chapters(data: bytes, label: str) -> list[Chapter]:
    """Podcasting 2.0 JSON chapters (titled, in the table of contents), in time order; raises PublisherFileError."""
    parsed = _validated(_JsonChapters, data, label)
    shown = sorted((c for c in parsed.chapters if c.toc and c.title.strip()), key=lambda c: c.startTime)
    return [Chapter(i, c.startTime, c.endTime, c.title.strip(), c.url) for i, c in enumerate(shown)]


def chapter_at(chapters: list[Chapter], seconds: float) -> Chapter | None:
    """The chapter playing at `seconds`: the last one started by then, unless it has ended."""
    current = None
    for chapter in chapters:
        if chapter.start > seconds:
            break
        current = chapter
    if current is not None and current.end is not None and seconds >= current.end:
        return None
    return current
