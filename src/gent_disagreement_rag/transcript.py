"""Provider-neutral transcript: what every Transcriber returns and every formatter consumes.

Kept as plain dataclasses with a JSON round trip so a transcript can be cached, exported and
re-formatted later without the provider that made it.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SENTENCE_ENDS = (".", "?", "!", "…", "。", "？", "！")
QUESTION_ENDS = ("?", "？")
CLOSING_PUNCTUATION = "\"'”’)]}»」』）"  # may follow a sentence's end: …?” or 「…？」


def ends_with(text: str, ends: tuple[str, ...] = SENTENCE_ENDS) -> bool:
    """Whether `text` ends with one of `ends`, closing quotes and brackets aside (a sentence's end by default)."""
    return text.rstrip().rstrip(CLOSING_PUNCTUATION).endswith(ends)


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word (or one CJK character) with its time span in seconds."""

    text: str
    start: float
    end: float
    speaker: int | None = None
    punctuated: str | None = None
    confidence: float | None = None

    @property
    def display(self) -> str:
        """The best text to show: the punctuated form when the provider gave one."""
        return self.punctuated or self.text


@dataclass(frozen=True, slots=True)
class Span:
    """An utterance or paragraph as the provider delimited it (indices into Transcript.words)."""

    start: float
    end: float
    speaker: int | None
    first_word: int
    last_word: int


@dataclass(slots=True)
class Transcript:
    """Words with times and speakers, plus the provider's own grouping when it gave one."""

    provider: str
    model: str
    duration: float
    words: list[Word]
    options: dict[str, Any] = field(default_factory=dict)
    language: str | None = None
    utterances: list[Span] | None = None
    paragraphs: list[Span] | None = None
    # The transcript's own names for its speaker ids ("0": "Ann"), when it has them (a publisher's transcript):
    # they win over a speakers_map, which names a diarizer's anonymous ids.
    speaker_names: dict[str, str] | None = None

    def __setstate__(self, state: Any) -> None:
        """Unpickling (Prefect's stage cache): a transcript cached before a field existed gets the field's default
        instead of an unset slot, so an upgrade re-chunks cached transcripts without transcribing them again."""
        slots = state[1] if isinstance(state, tuple) else state
        for f in fields(self):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(self, f.name, slots.get(f.name, default))

    def names(self, speakers_map: dict[str, str] | None) -> dict[str, str]:
        """Display names by speaker id: the speakers_map, overridden by the transcript's own names."""
        return {**(speakers_map or {}), **(self.speaker_names or {})}

    @property
    def speech_seconds(self) -> float:
        return sum(max(0.0, w.end - w.start) for w in self.words)

    @property
    def has_speakers(self) -> bool:
        return any(w.speaker is not None for w in self.words)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Transcript:
        def spans(items: list[dict[str, Any]] | None) -> list[Span] | None:
            return None if items is None else [Span(**s) for s in items]

        return cls(
            provider=data["provider"],
            model=data["model"],
            duration=float(data["duration"]),
            words=[Word(**w) for w in data["words"]],
            options=dict(data.get("options") or {}),
            language=data.get("language"),
            utterances=spans(data.get("utterances")),
            paragraphs=spans(data.get("paragraphs")),
            speaker_names=data.get("speaker_names"),
        )


@dataclass(frozen=True, slots=True)
class TranscriptionResult:
    """A transcript plus the provider's raw response, kept verbatim for reprocessing."""

    transcript: Transcript
    raw: dict[str, Any]
