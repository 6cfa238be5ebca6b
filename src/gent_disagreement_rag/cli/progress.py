"""What `gdr ingest` shows while it runs: on a terminal a live table (what the run is doing before any episode
starts: starting the database, the orchestration server, the models; then the episodes running or failed, with
an audio bar), elsewhere (CI, `make run > log`) one plain line per event."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..ingest.events import EpisodeStatus, EpisodeSummary, ProgressEvent

STATUS_STYLE = {
    EpisodeStatus.QUEUED: "dim", EpisodeStatus.RUNNING: "cyan", EpisodeStatus.PROCESSED: "green",
    EpisodeStatus.FAILED: "red", EpisodeStatus.SKIPPED: "yellow", EpisodeStatus.BUSY: "blue",
}
STARTING_EPISODES = "starting the episodes (loading the models)"
AUDIO_LINE_STEP = 0.25  # without a terminal, a line each time an episode's transcription passes another quarter


@dataclass(frozen=True, slots=True)
class EpisodeView:
    """What the display knows of one episode: the latest of each thing its events said."""

    status: EpisodeStatus
    stage: str | None = None
    audio_done: float = 0.0
    audio_total: float | None = None
    transcript: str = ""
    transcript_note: str | None = None
    summary: EpisodeSummary | None = None

    def after(self, event: ProgressEvent) -> EpisodeView:
        """This view updated by `event` (a field the event leaves None keeps its value)."""
        known = {name: getattr(event, name) for name in ("stage", "audio_done", "audio_total", "transcript",
                                                          "transcript_note", "summary")}
        return replace(self, status=event.status, **{k: v for k, v in known.items() if v is not None})

    @property
    def error(self) -> str:
        return self.summary.error if self.summary else ""


class IngestProgress:
    """The run's progress callback (`on_progress`) and what the run is doing meanwhile (`say`)."""

    def __init__(self, console: Console):
        self.console = console
        self.episodes: dict[str, EpisodeView] = {}
        self.phase = "starting"  # what the run is doing while no episode has started a stage
        self.live = console.is_terminal
        self._since = time.monotonic()
        self._lock = threading.Lock()
        # Drawn afresh at every refresh (get_renderable), so the seconds a phase has taken keep counting.
        self._live = Live(console=console, transient=True, refresh_per_second=4,
                          get_renderable=self._render) if self.live else None

    def __enter__(self) -> IngestProgress:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def say(self, phase: str, *, line: bool = True) -> None:
        """The run is now doing `phase` (e.g. "starting the database"); `line`: also as a line without a terminal."""
        with self._lock:
            self.phase, self._since = phase, time.monotonic()
        if self._live is not None:
            self._live.refresh()  # drawn now: a quick phase is still seen
        elif line:
            self._print(phase)

    def on_progress(self, event: ProgressEvent) -> None:
        with self._lock:
            before = self.episodes.get(event.episode_id)
            now = (before or EpisodeView(event.status)).after(event)
            self.episodes[event.episode_id] = now
            line = _event_line(event.episode_id, before, now)
            if self.phase and event.status is EpisodeStatus.QUEUED:
                if self.phase != STARTING_EPISODES:
                    self.phase, self._since = STARTING_EPISODES, time.monotonic()
            elif event.stage not in (None, "download") or event.status.finished:
                self.phase = ""
        if line and not self.live:  # the live table redraws itself (get_renderable)
            self._print(line)

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _counts(self) -> str:
        return "  ".join(f"[{STATUS_STYLE[s]}]{s} {n}[/]" for s, n in sorted(self._count_by_status().items()))

    def _render(self) -> RenderableType:
        table = Table("episode", "status", "stage", "", title=f"ingest  {self._counts()}", title_justify="left")
        for episode_id, view in list(self.episodes.items()):
            if view.status in (EpisodeStatus.RUNNING, EpisodeStatus.FAILED):
                running = view.status is EpisodeStatus.RUNNING
                table.add_row(episode_id, f"[{STATUS_STYLE[view.status]}]{view.status}[/]",
                              (view.stage or "") if running else "", _audio_bar(view))
        if not self.phase:
            return table
        doing = Text(f"{self.phase}… {time.monotonic() - self._since:.0f} s", style="cyan", no_wrap=True)
        return Group(doing, table)

    def summary_table(self) -> Table:
        table = Table(title=f"ingest summary  {self._counts()}", title_justify="left")
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("episode", "left"), ("status", "left"), ("s", "right"), ("segments", "right"),
            ("audio min", "right"), ("tokens", "right"), ("cost $", "right"), ("transcript", "left"))
        for name, justify in columns:
            table.add_column(name, justify=justify, no_wrap=True)
        for episode_id, view in self.episodes.items():
            ended = view.summary or EpisodeSummary(episode_id, view.status)
            table.add_row(
                episode_id, f"[{STATUS_STYLE[view.status]}]{view.status}[/]", f"{ended.seconds:.1f}",
                str(ended.segments), f"{ended.audio_minutes:.2f}", str(ended.tokens), f"{ended.cost_usd:.4f}",
                view.transcript,
            )
        return table

    def failures(self) -> list[tuple[str, str]]:
        """(episode, reason) of every episode that did not end processed, each reason in full; without a terminal
        none: each was printed as its own event line already."""
        if not self.live:
            return []
        ended = (EpisodeStatus.FAILED, EpisodeStatus.SKIPPED, EpisodeStatus.BUSY)
        return [(e, view.error) for e, view in self.episodes.items() if view.status in ended and view.error]

    def running(self) -> list[str]:
        """The episodes still running (cut short when the run is interrupted)."""
        return [e for e, view in self.episodes.items() if view.status is EpisodeStatus.RUNNING]

    def transcript_notes(self) -> list[tuple[str, str]]:
        """(episode, why the publisher's transcript was not read) of every episode transcribed instead."""
        return [(e, view.transcript_note) for e, view in self.episodes.items() if view.transcript_note]

    def _count_by_status(self) -> dict[EpisodeStatus, int]:
        counts: dict[EpisodeStatus, int] = {}
        for view in self.episodes.values():
            counts[view.status] = counts.get(view.status, 0) + 1
        return counts


def _event_line(episode_id: str, before: EpisodeView | None, now: EpisodeView) -> str | None:
    """The plain line for an episode's report (None: nothing new worth a line): a new status, a new stage, or
    its transcription past another AUDIO_LINE_STEP of the audio."""
    if before is None or now.status != before.status:
        if now.status.finished and now.error:
            return f"{episode_id} {now.status}: {now.error}"
        if now.status is EpisodeStatus.PROCESSED:
            ended = now.summary or EpisodeSummary(episode_id, now.status)
            return f"{episode_id} processed: {ended.segments} segments in {ended.seconds:.1f} s"
        return f"{episode_id} {now.status}"
    if now.stage and now.stage != before.stage:
        return f"{episode_id} {now.stage}"
    total = now.audio_total
    if now.stage == "transcribe" and total:
        step = int(min(now.audio_done, total) / total / AUDIO_LINE_STEP)
        if step > int(min(before.audio_done, total) / total / AUDIO_LINE_STEP):
            return f"{episode_id} transcribe: {now.audio_done:.0f}/{total:.0f} s of audio"
    return None


BAR_WIDTH = 20


def _audio_bar(view: EpisodeView) -> str:
    """Transcription's audio seconds done of the episode's total, as a bar."""
    total = view.audio_total
    if view.stage != "transcribe" or not total:
        return ""
    done = min(view.audio_done, total)
    filled = round(BAR_WIDTH * done / total)
    return f"{'█' * filled}{'░' * (BAR_WIDTH - filled)} {done:.0f}/{total:.0f} s"
