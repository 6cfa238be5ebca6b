"""What each stage's output depends on: one typed object per stage, built from the settings and the episode
the same way by every command (`gdr ingest`, `gdr format`, the plan's staleness check, the flows).

Each object hashes into its stage's cache key (the key of the stage before it included, so a change
recomputes everything downstream and nothing upstream), and the format stage's one is stored with the
episode's segments (`episodes.segments_config`) and compared with today's for staleness, field by field.
The transcribe stage is a discriminated union, as pgai keeps a vectorizer's config: the publisher's
transcript or a transcriber.

The hashes are those of the keys this module replaced, part for part: upgrading does not pay for a
transcription or an embedding again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from ..settings import Settings
from ..text.chunking import ChunkerConfig

TRANSCRIBE_VERSION = "1"
PUBLISHER_TRANSCRIPT_VERSION = "1"  # how a publisher's transcript becomes a Transcript (sources/publisher.py)
FORMAT_VERSION = "2"  # the quality gate and how chunks are made from a transcript (the chunker's own version is in its key)
EXPORT_VERSION = "2"
EMBED_VERSION = "2"  # 2: batches carry the model that made them
VOICES_VERSION = "1"  # how a transcript's speakers' voices are embedded (ingest/stages.py speaker_voices)

TOKEN_COUNTER = "cl100k"  # the chunker's token counts (text/tokens.py)
# How a provider's raw response is read into words (the registry's parse_raw). 2: Whisper's word pieces are
# joined into the words they spell ("co-host", not "co -host"). Episodes whose stored text an older parser made
# are stale, re-derived from their cached transcripts; the providers whose words the change touches:
TRANSCRIPT_PARSER = 2
REPARSED_PROVIDERS = frozenset({"local"})


def stable_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class TranscriptSourceKind(StrEnum):
    TRANSCRIBER = "transcriber"
    PUBLISHER = "publisher"


@dataclass(frozen=True, slots=True)
class TranscriberConfig:
    """A transcriber's transcript: its provider, model and options, and the number of speakers when the
    provider takes it as an input."""

    provider: str
    model: str
    options: dict[str, Any]
    speakers: int | None = None  # only when the transcriber uses the count (Deepgram's keys stay as they were)
    kind: TranscriptSourceKind = TranscriptSourceKind.TRANSCRIBER

    def cache_key(self, audio_sha256: str | None) -> str:
        speakers = (self.speakers,) if self.speakers is not None else ()
        return stable_hash("transcribe", TRANSCRIBE_VERSION, audio_sha256, self.provider, self.model, self.options,
                           *speakers)


@dataclass(frozen=True, slots=True)
class PublisherTranscriptConfig:
    """The publisher's own transcript, by its content (the fetched file is named by its sha256); the audio's
    content too, whose length the transcript's duration and the coverage gate take. No provider is built for it."""

    file_name: str
    transcript_type: str | None
    kind: TranscriptSourceKind = TranscriptSourceKind.PUBLISHER

    def cache_key(self, audio_sha256: str | None) -> str:
        return stable_hash("transcribe", "publisher", PUBLISHER_TRANSCRIPT_VERSION, self.file_name,
                           self.transcript_type, audio_sha256)


TranscribeConfig = TranscriberConfig | PublisherTranscriptConfig


@dataclass(frozen=True, slots=True)
class VoicesConfig:
    """How the speaker stage embeds each speaker's voice from the cached audio (providers/transcribers/voices.py)."""

    model: str
    min_embed_seconds: float
    max_embed_seconds: float
    max_spans_per_speaker: int

    @classmethod
    def current(cls) -> VoicesConfig:
        from ..providers.transcribers import voices

        return cls(voices.MODEL, voices.MIN_EMBED_SECONDS, voices.MAX_EMBED_SECONDS, voices.MAX_SPANS_PER_SPEAKER)

    def cache_key(self, transcribe_key: str) -> str:
        return stable_hash("voices", VOICES_VERSION, transcribe_key, self.model, self.min_embed_seconds,
                           self.max_embed_seconds, self.max_spans_per_speaker)


@dataclass(frozen=True, slots=True)
class VoiceNamingConfig:
    """What names an episode's speakers from the voice library when it has no speakers_map: the voice model and
    the similarity above which a voice is a known person. A change makes the episodes named that way stale."""

    model: str
    same_person: float
    pitch_agree: float

    @classmethod
    def current(cls) -> VoiceNamingConfig:
        from ..providers.transcribers import voices

        return cls(voices.MODEL, voices.SAME_PERSON, voices.PITCH_AGREE)

    def stored(self) -> dict[str, Any]:
        return {"model": self.model, "same_person": self.same_person, "pitch_agree": self.pitch_agree}


@dataclass(frozen=True, slots=True)
class FormatConfig:
    """Besides the transcript, what decides an episode's chunks: stored with them, compared for staleness.

    `speaker_names` are the names the chunks are made with once the name stage has run: the speakers_map, or for
    an episode without one the voice library's (then `voice_naming` says how they were found)."""

    chunker: ChunkerConfig
    speakers_map: dict[str, str] = field(default_factory=dict)
    token_counter: str = TOKEN_COUNTER
    transcript_parser: int = TRANSCRIPT_PARSER
    skip_quality_gate: bool = False  # decides whether the stage fails, not what it makes: not stored
    speaker_names: dict[str, str] | None = None
    voice_naming: VoiceNamingConfig | None = None

    @classmethod
    def from_settings(cls, settings: Settings, speakers_map: dict[str, str]) -> FormatConfig:
        return cls(ChunkerConfig.from_settings(settings), dict(speakers_map),
                   skip_quality_gate=settings.skip_quality_gate)

    def named(self, names: dict[str, str]) -> FormatConfig:
        """This configuration with the name stage's names."""
        return replace(self, speaker_names=dict(names),
                       voice_naming=None if self.speakers_map else VoiceNamingConfig.current())

    @property
    def names(self) -> dict[str, str]:
        """Speaker number -> name, as the chunker and the exports take them."""
        return self.speakers_map if self.speaker_names is None else self.speaker_names

    def cache_key(self, transcribe_key: str, transcribed_by: str | None) -> str:
        # The parser is in the key only for the providers whose parsing it changed (Deepgram's keys stay as they were).
        parser = (self.transcript_parser,) if transcribed_by in REPARSED_PROVIDERS else ()
        return stable_hash("format", FORMAT_VERSION, transcribe_key, self.names, self.chunker.cache_key(),
                           self.token_counter, self.skip_quality_gate, *parser)

    def stored(self) -> dict[str, Any]:
        """As kept in `episodes.segments_config`."""
        stored: dict[str, Any] = {"chunker": self.chunker.cache_key(), "token_counter": self.token_counter,
                                  "speakers_map": self.speakers_map, "transcript_parser": self.transcript_parser}
        if self.speaker_names is not None:
            stored["speaker_names"] = self.speaker_names
        if self.voice_naming is not None:
            stored["voice_naming"] = self.voice_naming.stored()
        return stored

    def stale_reasons(self, stored: dict[str, Any] | None, transcribed_by: str | None) -> list[str]:
        """How the segments a stored config made differ from what this one makes ([]: they do not). A field the
        stored config lacks was not recorded then and is not held against it; the parser is the exception (absent:
        version 1), because re-deriving text from a local transcript costs no more than CPU time."""
        reasons = []
        parser = (stored or {}).get("transcript_parser", 1)
        if transcribed_by in REPARSED_PROVIDERS and parser != self.transcript_parser:
            reasons.append(f"text read from the {transcribed_by} transcript by parser {parser}, now "
                           f"{self.transcript_parser} (it joins Whisper's word pieces: 'co-host', not 'co -host')")
        if stored is None:
            return reasons
        wanted = self.stored()
        stored_chunker, wanted_chunker = stored.get("chunker", {}), wanted["chunker"]
        for name in sorted(stored_chunker.keys() | wanted_chunker.keys()):
            if stored_chunker.get(name) != wanted_chunker.get(name):
                reasons.append(f"chunked with {name} {stored_chunker.get(name)}, settings want {wanted_chunker.get(name)}")
        if stored.get("token_counter") != self.token_counter:
            reasons.append(f"tokens counted with {stored.get('token_counter')}, now {self.token_counter}")
        stored_naming, naming = stored.get("voice_naming"), VoiceNamingConfig.current().stored()
        if stored_naming is not None and not self.speakers_map and stored_naming != naming:
            reasons.append(f"speakers named by voice with {json.dumps(stored_naming)}, now {json.dumps(naming)}")
        if stored.get("speakers_map") != self.speakers_map:
            reasons.append(f"speakers named {json.dumps(stored.get('speakers_map'))}, "
                           f"the catalogue now says {json.dumps(self.speakers_map)}")
        return reasons


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """Where the files go and the title they carry; whether they are all still there (deleted ones are written again)."""

    folder: str
    title: str
    present: bool

    def cache_key(self, format_key: str) -> str:
        return stable_hash("export", EXPORT_VERSION, format_key, self.folder, self.title, self.present)


@dataclass(frozen=True, slots=True)
class EmbedConfig:
    """The model whose vectors the episode gets (its registry id)."""

    model_id: str

    def cache_key(self, format_key: str) -> str:
        return stable_hash("embed", EMBED_VERSION, format_key, self.model_id)

    def stale_reasons(self, stored_model_ids: Sequence[str], has_segments: bool) -> list[str]:
        if has_segments and self.model_id not in stored_model_ids:
            return [f"embedded with {', '.join(stored_model_ids) or 'no model'}, settings want {self.model_id}"]
        return []


@dataclass(frozen=True, slots=True)
class StageKeys:
    transcribe: str
    voices: str
    format: str
    export: str
    embed: str


@dataclass(frozen=True, slots=True)
class EpisodeConfig:
    """Every stage's configuration for one episode whose audio is known (after its download)."""

    transcribe: TranscribeConfig
    voices: VoicesConfig
    format: FormatConfig
    export: ExportConfig
    embed: EmbedConfig

    def named(self, names: dict[str, str]) -> EpisodeConfig:
        """The configuration once the name stage has named the speakers (the format stage on are keyed by the names)."""
        return replace(self, format=self.format.named(names))

    def keys(self, audio_sha256: str | None) -> StageKeys:
        transcribe = self.transcribe.cache_key(audio_sha256)
        transcribed_by = self.transcribe.provider if isinstance(self.transcribe, TranscriberConfig) else None
        fmt = self.format.cache_key(transcribe, transcribed_by)
        return StageKeys(transcribe, self.voices.cache_key(transcribe), fmt, self.export.cache_key(fmt),
                         self.embed.cache_key(fmt))
