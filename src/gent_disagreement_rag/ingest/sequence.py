"""The one episode sequence:
[download (audio, the publisher's transcript and chapters) ->] transcribe -> voices -> name -> format -> export
-> embed -> store.

Written once, here. `process_episode` calls each stage through `run_stage`: directly by default (a
shell, the bench), or as a cached, retried Prefect task (the orchestration passes its own runner), so
the flow is this sequence stage by stage and cannot drift from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..text.exports import EXPORT_SUFFIXES
from . import stages
from .config import (
    EmbedConfig,
    EpisodeConfig,
    ExportConfig,
    FormatConfig,
    PublisherTranscriptConfig,
    TranscribeConfig,
    TranscriberConfig,
    VoicesConfig,
)
from .context import RunContext
from .events import EpisodeStatus, ProgressEvent
from .plan import EpisodeJob
from .reformat import parsed_again

STAGE_NAMES = ("download", "transcribe", "voices", "name", "format", "export", "embed", "store")


class StageRunner(Protocol):
    def __call__(self, name: str, func: Callable[..., Any], *args: Any, cache_key: str | None = None) -> Any:
        """Run stage `name` (`func(*args)`); `cache_key` names its output when it may be reused."""
        ...


def call_stage(name: str, func: Callable[..., Any], *args: Any, cache_key: str | None = None) -> Any:
    """The plain runner: call the stage, no cache, no retries."""
    return func(*args)


@dataclass(frozen=True, slots=True)
class EpisodeOutcome:
    segments: int
    audio_seconds: float


def episode_config(ctx: RunContext, job: EpisodeJob) -> EpisodeConfig:
    """Every stage's configuration for an episode whose audio is known (after its download)."""
    transcribe: TranscribeConfig
    if job.transcript_file is not None:
        transcribe = PublisherTranscriptConfig(job.transcript_file.name, job.transcript_type)
    else:
        t = ctx.transcriber
        transcribe = TranscriberConfig(t.provider, t.model, t.options(), len(job.speakers_map) if t.uses_speaker_count else None)
    folder = ctx.settings.transcripts_dir.resolve()
    present = all((folder / f"{job.stem}{suffix}").exists() for suffix in EXPORT_SUFFIXES.values())
    return EpisodeConfig(transcribe, VoicesConfig.current(), FormatConfig.from_settings(ctx.settings, job.speakers_map),
                         ExportConfig(str(folder), job.title, present), EmbedConfig(ctx.embedder.model_id))


def process_episode(ctx: RunContext, job: EpisodeJob, run_id: str = "", run_stage: StageRunner = call_stage) -> EpisodeOutcome:
    """Every stage of one episode, in order; raises the first stage's error that is not retried away.
    Each stage is reported to the run's progress callback as it starts."""

    def run_reported(name: str, func: Callable[..., Any], *args: Any, cache_key: str | None = None) -> Any:
        ctx.progress(ProgressEvent(job.episode_id, EpisodeStatus.RUNNING, stage=name))
        return run_stage(name, func, *args, cache_key=cache_key)

    return _sequence(ctx, job, run_id, run_reported)


def _sequence(ctx: RunContext, job: EpisodeJob, run_id: str, run_stage: StageRunner) -> EpisodeOutcome:
    # The download stage also fetches the publisher's transcript and chapters: whether the episode is
    # transcribed at all is decided there, before the transcribe stage's cache key is computed.
    if job.needs_download or job.needs_publisher_files:
        job = run_stage("download", stages.download, ctx, job)
    config = episode_config(ctx, job)
    keys = config.keys(job.audio_sha256)
    # A cached transcription holds the transcript as the version that made it parsed it: read again from its raw response.
    transcription = parsed_again(run_stage("transcribe", stages.transcribe, ctx, job, run_id, cache_key=keys.transcribe),
                                 ctx.settings)
    # The speakers' voices (cached), then their names: the map's (its voices join the library) or the library's.
    found = run_stage("voices", stages.speaker_voices, ctx, job, transcription.transcript, cache_key=keys.voices)
    names = run_stage("name", stages.name_speakers, ctx, job, found)
    keys = config.named(names).keys(job.audio_sha256)
    episode = run_stage("format", stages.format_episode, ctx, job, transcription.transcript, names, cache_key=keys.format)
    run_stage("export", stages.export, ctx, job, transcription, episode, names, cache_key=keys.export)
    batch = run_stage("embed", stages.embed, ctx, job, episode, run_id, cache_key=keys.embed)
    segments = run_stage("store", stages.store, ctx, job, episode, batch, names)
    return EpisodeOutcome(segments=segments, audio_seconds=transcription.transcript.duration)
