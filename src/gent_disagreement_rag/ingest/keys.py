"""Each stage's cache key: a hash of exactly what determines its output, so a rerun pays for nothing
and any change (audio, provider, model, options, names, chunker, stage version) recomputes what it must."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..text.exports import EXPORT_SUFFIXES
from .context import RunContext
from .plan import REPARSED_PROVIDERS, TOKEN_COUNTER, TRANSCRIPT_PARSER, EpisodeJob, chunker_config

TRANSCRIBE_VERSION = "1"
PUBLISHER_TRANSCRIPT_VERSION = "1"  # how a publisher's transcript becomes a Transcript (sources/publisher.py)
FORMAT_VERSION = "2"  # the quality gate and how chunks are made from a transcript (the chunker's own version is in its key)
EXPORT_VERSION = "2"
EMBED_VERSION = "2"  # 2: batches carry the model that made them
VOICES_VERSION = "1"  # how a transcript's speakers' voices are embedded (ingest/stages.py speaker_voices)


def stable_hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StageKeys:
    transcribe: str
    voices: str
    format: str
    export: str
    embed: str


def stage_keys(ctx: RunContext, job: EpisodeJob, names: dict[str, str] | None = None) -> StageKeys:
    """The keys of an episode whose audio is known (after its download). `names`: its speakers' names when
    known (the voice library's, for an episode without a speakers_map), else its speakers_map."""
    from ..providers.transcribers import voices as speaker_voices
    parser: tuple[int, ...] = ()
    if job.transcript_file is not None:
        # The publisher's file by its content (its name is its sha256), and the audio, whose length the
        # transcript's duration and the coverage gate take. No provider is built for it.
        transcribe = stable_hash("transcribe", "publisher", PUBLISHER_TRANSCRIPT_VERSION, job.transcript_file.name,
                                 job.transcript_type, job.audio_sha256)
    else:
        t = ctx.transcriber
        speakers = (len(job.speakers_map),) if t.uses_speaker_count else ()  # Deepgram's keys stay as they were
        transcribe = stable_hash("transcribe", TRANSCRIBE_VERSION, job.audio_sha256, t.provider, t.model, t.options(),
                                 *speakers)
        parser = (TRANSCRIPT_PARSER,) if t.provider in REPARSED_PROVIDERS else ()  # Deepgram's keys stay as they were
    fmt = stable_hash(
        "format", FORMAT_VERSION, transcribe, job.speakers_map if names is None else names, chunker_config(ctx.settings).cache_key(), TOKEN_COUNTER,
        ctx.settings.skip_quality_gate, *parser,
    )
    folder = ctx.settings.transcripts_dir.resolve()
    present = all((folder / f"{job.stem}{suffix}").exists() for suffix in EXPORT_SUFFIXES.values())
    export = stable_hash("export", EXPORT_VERSION, fmt, str(folder), job.title, present)  # deleted files are written again
    embed = stable_hash("embed", EMBED_VERSION, fmt, ctx.embedder.model_id)
    voices = stable_hash("voices", VOICES_VERSION, transcribe, speaker_voices.MODEL, speaker_voices.MIN_EMBED_SECONDS,
                         speaker_voices.MAX_EMBED_SECONDS, speaker_voices.MAX_SPANS_PER_SPEAKER)
    return StageKeys(transcribe, voices, fmt, export, embed)
