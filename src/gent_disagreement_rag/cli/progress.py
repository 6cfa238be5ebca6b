"""What `gdr ingest` shows while it runs: on a terminal a live table (what the run is doing before any episode
starts: starting the database, the orchestration server, the models; then the episodes running or failed, with
an audio bar), elsewhere (CI, `make run > log`) one plain line per event."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "queued": "dim", "running": "cyan", "processed": "green", "failed": "red", "skipped": "yellow", "busy": "blue",
}
FINISHED = frozenset({"processed", "failed", "skipped", "busy"})
STARTING_EPISODES = "starting the episodes (loading the models)"
AUDIO_LINE_STEP = 0.25  # without a terminal, a line each time an episode's transcription passes another quarter


class IngestProgress:
    """The run's progress callback (`on_progress`) and what the run is doing meanwhile (`say`)."""

    def __init__(self, console: Console):
        self.console = console
        self.episodes: dict[str, dict[str, Any]] = {}
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

    def on_progress(self, episode_id: str, status: str, info: dict[str, Any]) -> None:
        with self._lock:
            episode = self.episodes.setdefault(episode_id, {})
            before = dict(episode)
            episode.update(info, status=status)
            line = _event_line(episode_id, before, episode)
            if self.phase and status == "queued":
                if self.phase != STARTING_EPISODES:
                    self.phase, self._since = STARTING_EPISODES, time.monotonic()
            elif info.get("stage") not in (None, "download") or status in FINISHED:
                self.phase = ""
        if line and not self.live:  # the live table redraws itself (get_renderable)
            self._print(line)

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _counts(self) -> str:
        return "  ".join(f"[{STATUS_STYLE[s]}]{s} {n}[/]" for s, n in sorted(self._count_by_status().items()))

    def _render(self) -> RenderableType:
        table = Table("episode", "status", "stage", "", title=f"ingest  {self._counts()}", title_justify="left")
        for episode_id, info in list(self.episodes.items()):
            if info["status"] in ("running", "failed"):
                table.add_row(episode_id, f"[{STATUS_STYLE[info['status']]}]{info['status']}[/]",
                              info.get("stage", "") if info["status"] == "running" else "", _audio_bar(info))
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
        for episode_id, info in self.episodes.items():
            status = info["status"]
            table.add_row(
                episode_id, f"[{STATUS_STYLE.get(status, '')}]{status}[/]", f"{info.get('seconds', 0):.1f}",
                str(info.get("segments", 0)), f"{info.get('audio_minutes', 0):.2f}", str(info.get("tokens", 0)),
                f"{info.get('cost_usd', 0):.4f}", info.get("transcript", ""),
            )
        return table

    def failures(self) -> list[tuple[str, str]]:
        """(episode, reason) of every episode that did not end processed, each reason in full; without a terminal
        none: each was printed as its own event line already."""
        if not self.live:
            return []
        return [(e, info.get("error", "")) for e, info in self.episodes.items()
                if info["status"] in ("failed", "skipped", "busy") and info.get("error")]

    def transcript_notes(self) -> list[tuple[str, str]]:
        """(episode, why the publisher's transcript was not read) of every episode transcribed instead."""
        return [(e, info["transcript_note"]) for e, info in self.episodes.items() if info.get("transcript_note")]

    def _count_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for info in self.episodes.values():
            counts[info["status"]] = counts.get(info["status"], 0) + 1
        return counts


def _event_line(episode_id: str, before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The plain line for an episode's report (None: nothing new worth a line): a new status, a new stage, or
    its transcription past another AUDIO_LINE_STEP of the audio."""
    status = now["status"]
    if status != before.get("status"):
        if status in FINISHED and now.get("error"):
            return f"{episode_id} {status}: {now['error']}"
        if status == "processed":
            return f"{episode_id} processed: {now.get('segments', 0)} segments in {now.get('seconds', 0):.1f} s"
        return f"{episode_id} {status}"
    stage = now.get("stage")
    if stage and stage != before.get("stage"):
        return f"{episode_id} {stage}"
    total = now.get("audio_total")
    if stage == "transcribe" and total:
        step = int(min(now.get("audio_done", 0.0), total) / total / AUDIO_LINE_STEP)
        if step > int(min(before.get("audio_done", 0.0), total) / total / AUDIO_LINE_STEP):
            return f"{episode_id} transcribe: {now['audio_done']:.0f}/{total:.0f} s of audio"
    return None


BAR_WIDTH = 20


def _audio_bar(info: dict[str, Any]) -> str:
    """Transcription's audio seconds done of the episode's total, as a bar."""
    total = info.get("audio_total")
    if info.get("stage") != "transcribe" or not total:
        return ""
    done = min(info.get("audio_done", 0.0), total)
    filled = round(BAR_WIDTH * done / total)
    return f"{'█' * filled}{'░' * (BAR_WIDTH - filled)} {done:.0f}/{total:.0f} s"
