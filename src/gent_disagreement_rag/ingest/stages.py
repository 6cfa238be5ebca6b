"""One episode's stages as plain functions of a RunContext: no Prefect here.

From a Python shell (or see `sequence.process_episode`, which runs them all in order):

    >>> ctx = RunContext.open(); [job] = plan_episodes(ctx.settings, ctx.db, ["1"], force=True).jobs
    >>> result = transcribe(ctx, job); episode = format_episode(ctx, job, result.transcript)
    >>> export(ctx, job, result, episode); batch = embed(ctx, job, episode); store(ctx, job, episode, batch)
"""

from __future__ import annotations

import hashlib
import logging
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, UndecodableAudioError
from ..files import write_all_atomic, write_atomic
from ..providers import audio
from ..providers.embedders import EmbeddingBatch
from ..sources.catalogue import catalogue_entries
from ..sources.feeds import download_enclosure, fetch, is_enclosure_file, parse_feed, safe_url
from ..sources.publisher import (
    MAX_PUBLISHER_BYTES,
    PUBLISHER,
    SUFFIXES,
    Chapter,
    PublisherFileError,
    TranscriptLink,
    parse_chapters,
    parse_transcript,
)
from ..storage import costs, episodes, segments
from ..storage import voices as voice_library
from ..storage.episodes import TranscriptOrigin, TranscriptSource
from ..text.chunking import Chunk, chunk_transcript
from ..text.exports import render_exports
from ..text.quality import QualityReport, check_transcript, enforce
from ..transcript import Transcript, TranscriptionResult
from .config import FormatConfig
from .context import RunContext
from .events import EpisodeStatus, ProgressEvent
from .plan import EpisodeJob
from .retry import is_transient, with_db_retries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FormattedEpisode:
    chunks: list[Chunk]
    quality: QualityReport


def register_catalogue(ctx: RunContext) -> int:
    """Record the catalogue's entries (new ones pending, metadata refreshed); a malformed catalogue raises
    here, before any work. Returns the number of entries."""
    return episodes.sync_catalogue(ctx.db, catalogue_entries(ctx.settings))


def discover(ctx: RunContext) -> list[str]:
    """Register every FEED_URL's episodes (new ones pending); returns the new ones' ids. Not cached: the
    feed is read afresh on every run."""
    known = {row.episode_id for row in episodes.list_episodes(ctx.db)}
    items = [item for url in ctx.settings.feed_url for item in parse_feed(url)]
    ids = episodes.sync_feed(ctx.db, items, ctx.settings.default_speakers_map)
    return [ids[item.guid] for item in items if ids[item.guid] not in known]


def download(ctx: RunContext, job: EpisodeJob) -> EpisodeJob:
    """Fetch a feed episode's enclosure into FEED_AUDIO_DIR (record its hash and size, drop older enclosures'
    files), then the publisher's transcript and chapters (`fetch_publisher_files`)."""
    if job.needs_download:
        if job.audio_url is None:
            raise ConfigError(f"episode {job.episode_id}: no audio file and no audio_url to download it from")
        path, sha256, size = download_enclosure(
            job.audio_url, job.audio_path, max_bytes=ctx.settings.max_audio_bytes, expected_size=job.audio_size
        )
        episodes.record_audio(ctx.db, job.episode_id, sha256, audio_size=size)
        for stale in path.parent.iterdir():
            if stale != path and is_enclosure_file(stale.name, job.episode_id):
                stale.unlink(missing_ok=True)
        job = replace(job, audio_sha256=sha256)
    return fetch_publisher_files(ctx, job) if job.needs_publisher_files else job


def fetch_publisher_files(ctx: RunContext, job: EpisodeJob) -> EpisodeJob:
    """The publisher's transcript and chapters, each kept under GDR_HOME/publisher by its content's hash.

    A transcript is kept only if it parses and passes the coverage gate against the audio's length; any
    other outcome (an HTTP error, a malformed file, a fraction of the audio) is the reason the episode is
    transcribed instead, in `transcript_note`: reading the publisher's is a saving, never a failure. Chapters
    that cannot be read are left out, with a warning.
    """
    if job.transcript_url and job.transcript_type:
        link = TranscriptLink(job.transcript_url, job.transcript_type)
        try:
            job = replace(job, transcript_file=_usable_transcript(ctx, job, link))
        except Exception as exc:  # whatever the publisher's file does to a parser, the episode is transcribed
            note = f"the publisher's transcript was not used: {ctx.settings.scrub(str(exc))}; transcribed instead"
            log.warning("episode %s: %s", job.episode_id, note)
            job = replace(job, transcript_note=note)
    if job.chapters_url:
        label = f"chapters {safe_url(job.chapters_url)}"
        try:
            data = fetch(job.chapters_url, label, MAX_PUBLISHER_BYTES)
            parse_chapters(data, label)
            job = replace(job, chapters_file=_keep_publisher_file(ctx, data, ".chapters.json"))
        except Exception as exc:  # chapters are an extra: the episode goes on without them
            log.warning("episode %s: its chapters are left out: %s", job.episode_id, ctx.settings.scrub(str(exc)))
    return replace(job, publisher_fetched=True)


def _usable_transcript(ctx: RunContext, job: EpisodeJob, link: TranscriptLink) -> Path:
    label = f"transcript {safe_url(link.url)}"
    fmt = link.format
    if fmt is None:
        raise PublisherFileError(f"{label}: type {link.type!r} is not one we read")
    data = fetch(link.url, label, MAX_PUBLISHER_BYTES)
    transcript = parse_transcript(data, fmt, label, audio.audio_seconds(job.audio_path))
    report = check_transcript(transcript, transcript.duration)
    if not report.passed and not ctx.settings.skip_quality_gate:
        raise PublisherFileError(f"{label}: fails the coverage check: {'; '.join(report.reasons)}")
    return _keep_publisher_file(ctx, data, SUFFIXES[fmt])


def _keep_publisher_file(ctx: RunContext, data: bytes, suffix: str) -> Path:
    path = ctx.settings.publisher_files_path / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return path


def read_publisher_transcript(job: EpisodeJob) -> TranscriptionResult:
    """The kept publisher's transcript as a TranscriptionResult; its raw response is the file, verbatim."""
    assert job.transcript_file is not None and job.transcript_type is not None
    link = TranscriptLink(job.transcript_url or "", job.transcript_type)
    assert link.format is not None  # checked when the file was kept
    data = job.transcript_file.read_bytes()
    transcript = parse_transcript(data, link.format, f"transcript {job.transcript_file}", audio.audio_seconds(job.audio_path))
    transcript.options = {"url": safe_url(link.url)}
    raw = {"publisher_transcript": {"url": safe_url(link.url), "type": link.type, "duration": transcript.duration,
                                    "sha256": job.transcript_file.name.split(".", 1)[0],
                                    "text": data.decode("utf-8-sig")}}  # what `gdr format` rebuilds it from
    return TranscriptionResult(transcript, raw)


def episode_chapters(job: EpisodeJob) -> list[Chapter]:
    if job.chapters_file is None:
        return []
    return parse_chapters(job.chapters_file.read_bytes(), f"chapters {job.chapters_file}")


def transcript_origin(job: EpisodeJob) -> TranscriptOrigin:
    source = TranscriptSource.PUBLISHER if job.transcript_file is not None else TranscriptSource.TRANSCRIBER
    return TranscriptOrigin(source, job.transcript_url, job.transcript_note)


def transcribe(ctx: RunContext, job: EpisodeJob, run_id: str = "") -> TranscriptionResult:
    """Audio -> provider-neutral transcript plus the raw response (one provider request), recorded in the ledger;
    the audio seconds done go to the run's progress callback."""

    def report(**known: Any) -> None:  # the note is shown after the run's summary
        ctx.progress(ProgressEvent(job.episode_id, EpisodeStatus.RUNNING, stage="transcribe", **known))

    if job.transcript_file is not None:  # the publisher's: no provider request; the ledger records the saving
        result = read_publisher_transcript(job)
        t = result.transcript
        saved = ctx.providers.cost(ctx.settings.resolved_transcriber, audio_seconds=t.duration)
        report(transcript=f"{PUBLISHER} ({t.model})", transcript_note=job.transcript_note)
        record_cost(ctx, run_id, job.episode_id, "transcribe", PUBLISHER, t.model, 0, 0.0, 0, saved_usd=saved)
        return result

    def progress(done: float, total: float) -> None:
        report(audio_done=round(done, 1), audio_total=round(total, 1))

    report(transcript=ctx.transcriber.provider, transcript_note=job.transcript_note)
    try:
        result = ctx.transcriber.transcribe(job.audio_path, progress, speakers=len(job.speakers_map) or None)
    except UndecodableAudioError:
        episodes.record_undecodable(ctx.db, job.episode_id, job.audio_sha256, ctx.transcriber.provider)
        raise
    t = result.transcript
    record_cost(ctx, run_id, job.episode_id, "transcribe", t.provider, t.model, int(t.provider != "local"), t.duration, 0)
    return result


VOICE_PAUSE_SECONDS = 0.3  # a speaker's words are cut into stretches at pauses this long (as the local diarizer's phrases)


def speaker_stretches(transcript: Transcript) -> tuple[list[tuple[float, float]], list[int]]:
    """(start, end) of each stretch of one speaker's words without a pause, and its speaker (unlabelled: 0)."""
    spans: list[tuple[float, float]] = []
    labels: list[int] = []
    speaker = 0
    for w in transcript.words:
        speaker = w.speaker if w.speaker is not None else speaker
        if spans and labels[-1] == speaker and w.start - spans[-1][1] < VOICE_PAUSE_SECONDS:
            spans[-1] = (spans[-1][0], max(spans[-1][1], w.end))
        else:
            spans.append((w.start, w.end))
            labels.append(speaker)
    return spans, labels


def speaker_voices(ctx: RunContext, job: EpisodeJob, transcript: Transcript) -> list[dict[str, Any]]:
    """The voices stage: what each speaker of the transcript (the local diarizer's, Deepgram's or the publisher's)
    sounds like, embedded from the cached audio over their own stretches of speech. Plain JSON, cached by its key."""
    from ..providers.transcribers import voices
    from ..providers.transcribers.local_whisper import decode

    spans, labels = speaker_stretches(transcript)
    if not spans:
        return []
    found = voices.speaker_voices(decode(job.audio_path), spans, labels, ctx.speaker_model)
    return [{"speaker": v.speaker, "embedding": [round(float(x), 6) for x in v.embedding], "seconds": round(v.seconds, 2),
             "pitch": None if v.pitch is None else round(v.pitch, 3)} for v in found]


def name_speakers(ctx: RunContext, job: EpisodeJob, found: list[dict[str, Any]]) -> dict[str, str]:
    """The name stage: the episode's speakers_map when it has one (whose voices then join the library), else each
    voice's nearest known voice above voices.SAME_PERSON; a speaker left out gets "Speaker N" from the chunker."""
    from ..providers.transcribers import voices

    stored = [voices.SpeakerVoice(v["speaker"], np.asarray(v["embedding"], dtype=np.float32), v["seconds"],
                                  v.get("pitch")) for v in found]
    voice_library.save_episode_voices(ctx.db, job.episode_id, voices.MODEL, stored)
    if job.speakers_map:
        voice_library.enroll(ctx.db, job.episode_id, voices.MODEL,
                             {int(k): name for k, name in job.speakers_map.items() if k.isdigit()})
        return dict(job.speakers_map)
    known = voice_library.library(ctx.db, voices.MODEL, excluding_episode=job.episode_id)
    return {str(k): name for k, name in sorted(voices.name_voices(stored, known).items())}


def format_config(ctx: RunContext, job: EpisodeJob, names: dict[str, str] | None) -> FormatConfig:
    """The format stage's configuration, with the name stage's names when it ran."""
    config = FormatConfig.from_settings(ctx.settings, job.speakers_map)
    return config if names is None else config.named(names)


def format_episode(ctx: RunContext, job: EpisodeJob, transcript: Transcript, names: dict[str, str] | None = None
                   ) -> FormattedEpisode:
    """Quality gate, then speaker turns and retrieval chunks; a failing gate stops the episode. `names`: the
    speakers' names (name_speakers), the episode's speakers_map without them."""
    report = check_transcript(transcript, transcript.duration)
    if not ctx.settings.skip_quality_gate:
        enforce(report, f"episode {job.episode_id}:")
    config = format_config(ctx, job, names)
    chunks = chunk_transcript(transcript, config.names, config=config.chunker)
    return FormattedEpisode(chunks=chunks, quality=report)


def export(ctx: RunContext, job: EpisodeJob, transcription: TranscriptionResult, episode: FormattedEpisode,
           names: dict[str, str] | None = None) -> dict[str, str]:
    """The episode's five files under TRANSCRIPTS_DIR, replaced as one set; returns their paths by kind."""
    rendered = render_exports(job.stem, transcription.raw, transcription.transcript, episode.chunks, job.title,
                              format_config(ctx, job, names).names)
    return {kind: str(path) for kind, path in write_exports(ctx.settings.transcripts_dir, rendered).items()}


def write_exports(folder: Path, rendered: dict[str, tuple[str, str]]) -> dict[str, Path]:
    """`render_exports`' files written into `folder` as one set (files.write_all_atomic); their paths by kind."""
    paths = {kind: folder / name for kind, (name, _) in rendered.items()}
    write_all_atomic({paths[kind]: text for kind, (_, text) in rendered.items()})
    return paths


def embed(ctx: RunContext, job: EpisodeJob, episode: FormattedEpisode, run_id: str = "") -> EmbeddingBatch:
    """All of an episode's chunks in as few requests as the API limits allow, recorded in the ledger."""
    batch = ctx.embedder.embed([c.text for c in episode.chunks])
    record_cost(ctx, run_id, job.episode_id, "embed", batch.provider, batch.model, batch.requests, 0.0, batch.tokens)
    return batch


def store(ctx: RunContext, job: EpisodeJob, episode: FormattedEpisode, batch: EmbeddingBatch,
          names: dict[str, str] | None = None) -> int:
    """Replace the episode's rows atomically and mark it processed; returns the number of segments."""
    segments.store_episode(
        ctx.db, job.episode_id, episode.chunks, model_id=batch.model_id, provider=batch.provider, model=batch.model,
        vectors=batch.vectors, audio_sha256=job.audio_sha256, duration_seconds=episode.quality.duration,
        processed_by=processed_by(ctx), segments_config=format_config(ctx, job, names).stored(),
        chapters=episode_chapters(job), origin=transcript_origin(job),
    )
    return len(episode.chunks)


def processed_by(ctx: RunContext) -> str:
    """`host/worker` for the episode rows this process writes (`local` when no worker is named)."""
    return f"{socket.gethostname()}/{ctx.settings.worker_name or 'local'}"


def record_cost(
    ctx: RunContext, run_id: str, episode_id: str, stage: str, provider: str, model: str,
    requests: int, audio_seconds: float, tokens: int, *, saved_usd: float = 0.0,
) -> None:
    """Write a call that was paid for (or, with `saved_usd`, one a publisher's transcript made unnecessary) to
    the cost ledger. Database hiccups are retried, and in the end only logged: failing the stage would make
    its retry pay for the same call again."""
    cost = ctx.providers.cost(provider, audio_seconds=audio_seconds, tokens=tokens)
    try:
        with_db_retries(
            lambda: costs.record_call(
                ctx.db, run_id=run_id or None, episode_id=episode_id, stage=stage, provider=provider, model=model,
                requests=requests, audio_seconds=audio_seconds, tokens=tokens, cost_usd=cost, saved_usd=saved_usd,
            )
        )
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("cost ledger: the %s call of episode %s is not recorded: %s", stage, episode_id,
                    ctx.settings.scrub(f"{type(exc).__name__}: {exc}"))
