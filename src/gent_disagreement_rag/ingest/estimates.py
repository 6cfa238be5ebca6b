"""What `gdr ingest --dry-run` shows: each planned episode's audio minutes, tokens and cost, with no provider call.

Audio length is probed from the file (PyAV), or taken from the feed's itunes:duration for an episode
not downloaded yet. Embedding tokens are estimated from it: conversational English runs at about
2.7 words per second (~160 words a minute), and OpenAI's tokenizer averages about 1.3 tokens per
English word, so an audio minute is about 210 tokens. Costs use the configured list prices, and
local providers cost nothing. Stage caches are not consulted, so for episodes that ran before
(`--force`, a changed setting) the figure is an upper bound.

A feed episode whose publisher's transcript will be read (FEED_TRANSCRIPTS=prefer) costs no
transcription: its estimate says so and shows what transcribing it would have cost as saved. Whether the
file is usable is only known when it is fetched: an unusable one is transcribed after all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..providers.audio import audio_seconds, undecodable
from ..providers.registry import provider_registry
from ..settings import Settings
from ..sources.catalogue import catalogue_entries
from ..sources.publisher import PUBLISHER
from ..storage import episodes
from ..storage.database import Database
from .plan import EpisodeJob, EpisodePlan

WORDS_PER_SECOND = 2.7
TOKENS_PER_WORD = 1.3


@dataclass(frozen=True, slots=True)
class EpisodeEstimate:
    episode_id: str
    title: str
    audio_seconds: float | None  # None: not downloaded yet, and the feed gives no duration
    tokens: int
    cost_usd: float
    transcript: str  # who makes the transcript: "publisher (text/vtt)", or the transcriber
    saved_usd: float = 0.0  # the transcription the publisher's transcript makes unnecessary


def estimate_plan(settings: Settings, db: Database, plan: EpisodePlan) -> list[EpisodeEstimate]:
    """One estimate per job of the plan, in plan order."""
    rows = {r.episode_id: r for r in episodes.list_episodes(db, [job.episode_id for job in plan.jobs])}
    return [_estimate(settings, job, rows[job.episode_id].feed_duration_seconds if job.episode_id in rows else None)
            for job in plan.jobs]


def _estimate(settings: Settings, job: EpisodeJob, feed_seconds: float | None) -> EpisodeEstimate:
    seconds = feed_seconds if job.needs_download else audio_seconds(job.audio_path)
    tokens = round((seconds or 0.0) * WORDS_PER_SECOND * TOKENS_PER_WORD)
    providers = provider_registry(settings)
    transcription = providers.cost(settings.resolved_transcriber, audio_seconds=seconds or 0.0)
    embedding = providers.cost(settings.resolved_embedder, tokens=tokens)
    if job.transcript_url:
        return EpisodeEstimate(job.episode_id, job.title, seconds, tokens, embedding,
                               f"{PUBLISHER} ({job.transcript_type})", saved_usd=transcription)
    return EpisodeEstimate(job.episode_id, job.title, seconds, tokens, transcription + embedding,
                           settings.resolved_transcriber)


def will_fail(settings: Settings, db: Database, plan: EpisodePlan) -> dict[str, tuple[str, str, str]]:
    """{episode: (title, "fail" or "skip", why)} for every episode the run would touch and not process: those
    that cannot start (no audio, empty audio), whose audio cannot be decoded, and those it skips."""
    titles = {r.episode_id: r.title or r.file_name or "" for r in episodes.list_episodes(db)}
    titles |= {e.episode_id: e.display_title for e in catalogue_entries(settings)}
    out = {e: (titles.get(e, ""), "fail", why) for e, why in plan.invalid.items()}
    out |= {e: (titles.get(e, ""), "skip", why) for e, why in plan.skipped.items()}
    for job in plan.jobs:
        if not job.needs_download and (why := undecodable(job.audio_path)):
            out[job.episode_id] = (job.title, "fail", why)
    return out
