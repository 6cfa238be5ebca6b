"""Live terminal view of a `gdr ingest` run: episodes queued, running, processed, failed."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

STATUS_STYLE = {
    "queued": "dim", "running": "cyan", "processed": "green", "failed": "red", "skipped": "yellow", "busy": "blue",
}


class IngestProgress:
    """The run's progress callback (`on_progress`); redraws a table on every change."""

    def __init__(self, console: Console):
        self.console = console
        self.episodes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._live = Live(self._render(), console=console, transient=True, refresh_per_second=4)

    def __enter__(self) -> IngestProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)

    def on_progress(self, episode_id: str, status: str, info: dict[str, Any]) -> None:
        with self._lock:
            self.episodes.setdefault(episode_id, {}).update(info)
        self._live.update(self._render())

    def _counts(self) -> str:
        return "  ".join(f"[{STATUS_STYLE[s]}]{s} {n}[/]" for s, n in sorted(self._count_by_status().items()))

    def _render(self) -> Table:
        table = Table("episode", "status", "stage", "", title=f"ingest  {self._counts()}", title_justify="left")
        for episode_id, info in list(self.episodes.items()):
            if info["status"] in ("running", "failed"):
                table.add_row(episode_id, f"[{STATUS_STYLE[info['status']]}]{info['status']}[/]",
                              info.get("stage", "") if info["status"] == "running" else "", _audio_bar(info))
        return table

    def summary_table(self) -> Table:
        table = Table(title=f"ingest summary  {self._counts()}", title_justify="left")
        for name, justify in (("episode", "left"), ("status", "left"), ("s", "right"), ("segments", "right"),
                              ("audio min", "right"), ("tokens", "right"), ("cost $", "right"), ("transcript", "left")):
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
        """(episode, reason) of every episode that did not end processed, each reason in full."""
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


BAR_WIDTH = 20


def _audio_bar(info: dict[str, Any]) -> str:
    """Transcription's audio seconds done of the episode's total, as a bar."""
    total = info.get("audio_total")
    if info.get("stage") != "transcribe" or not total:
        return ""
    done = min(info.get("audio_done", 0.0), total)
    filled = round(BAR_WIDTH * done / total)
    return f"{'█' * filled}{'░' * (BAR_WIDTH - filled)} {done:.0f}/{total:.0f} s"
