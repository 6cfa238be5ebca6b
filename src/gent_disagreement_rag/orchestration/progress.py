"""A run's progress as a Prefect progress artifact, updated as episodes move through their stages (the
caller's own callback, `gdr ingest`'s live table, gets every report first)."""

from __future__ import annotations

import threading
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from ..ingest.events import ProgressCallback, ProgressEvent

# How far into an episode each stage starts. Transcription is most of the time: its share grows with the
# audio seconds done.
STAGE_START = {"download": 0.0, "transcribe": 0.05, "format": 0.85, "export": 0.88, "embed": 0.9, "store": 0.97}
TRANSCRIBE_SHARE = 0.8
UPDATE_SECONDS = 2.0  # at most one API update this often, and one whenever an episode finishes


class RunProgress:
    """A ProgressCallback that also keeps the run's `ingest-progress` artifact: the mean of the episodes'
    fractions done, in percent."""

    def __init__(self, episode_ids: list[str], downstream: ProgressCallback):
        self.downstream = downstream
        self.done = dict.fromkeys(episode_ids, 0.0)
        self._lock = threading.Lock()
        self._updated = time.monotonic()
        self.artifact_id = create_progress_artifact(0.0, key="ingest-progress",
                                                    description=f"{len(episode_ids)} episodes")

    @property
    def percent(self) -> float:
        return round(100 * sum(self.done.values()) / len(self.done), 1) if self.done else 100.0

    def __call__(self, event: ProgressEvent) -> None:
        self.downstream(event)
        with self._lock:
            if event.episode_id not in self.done:
                return
            self.done[event.episode_id] = max(self.done[event.episode_id], _fraction(event))
            due = event.status.finished or time.monotonic() - self._updated >= UPDATE_SECONDS
            if due:
                self._updated = time.monotonic()
                percent = self.percent
        if due:
            update_progress_artifact(self.artifact_id, percent)  # type: ignore[arg-type]  # Prefect types its sync-or-async functions as returning either


def _fraction(event: ProgressEvent) -> float:
    if event.status.finished:
        return 1.0
    if event.stage == "transcribe" and event.audio_total and event.audio_done is not None:
        return STAGE_START["transcribe"] + TRANSCRIBE_SHARE * min(1.0, event.audio_done / event.audio_total)
    return STAGE_START.get(event.stage, 0.0) if event.stage else 0.0
