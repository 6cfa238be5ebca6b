"""`gdr ingest`, `gdr status`, `gdr costs` and `gdr format`: running episodes and what they left."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import GdrError
from ..settings import Settings
from ..sources.publisher import PUBLISHER
from ..storage import costs, episodes
from ..storage.database import Database
from ..storage.episodes import EpisodeState

if TYPE_CHECKING:
    from ..ingest.plan import EpisodePlan
    from .progress import IngestProgress

from .common import app, console, counted, err_console, friendly_errors, load_settings


@app.command("status")
@friendly_errors
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """Every episode (catalogue and feed) with its processing status, whether the current settings make
    it stale (and why), and what its provider calls cost.

    Reads only: a catalogue entry the database does not know yet is listed as pending."""
    from ..ingest.plan import stale_reason, undecodable_note
    from ..sources.catalogue import catalogue_entries

    settings = load_settings()
    entries = catalogue_entries(settings)
    names = {e.episode_id: e.speakers_map for e in entries}
    with Database.from_settings(settings) as db:
        rows = [r.as_json() | {"stale": stale_reason(settings, r, names.get(r.episode_id, r.speakers_map)),
                               "undecodable": undecodable_note(settings, r)}
                for r in episodes.list_episodes(db)]
    known = {r["episode_id"] for r in rows}
    rows += [episodes.new_entry_json(e) | {"stale": None, "undecodable": None} for e in entries if e.episode_id not in known]
    if as_json:
        print(json.dumps({"episodes": rows}, indent=2, ensure_ascii=False))
        return
    table = Table("episode", "title", "status", "segments", "cost $", "transcript", "error / stale because / note",
                  title=counted(len(rows), "episode"))
    colours = {EpisodeState.PROCESSED: "green", EpisodeState.FAILED: "red", EpisodeState.PENDING: "yellow"}
    for r in rows:
        status = f"[{colours[r['status']]}]{r['status']}[/]" + (" [yellow](stale)[/]" if r["stale"] else "")
        why = "; ".join(x for x in (r["error"] and r["error"][:160], r["undecodable"], r["stale"], r["transcript_note"]) if x)
        table.add_row(r["episode_id"], escape(r["title"] or r["file_name"] or ""), status,
                      str(r["segments"]), f"{r['cost_usd']:.4f}", r["transcript_source"] or "", escape(why))
    if any(r["stale"] for r in rows):
        console.print("[yellow]stale episodes are re-chunked / re-embedded from cached transcripts by the next `gdr ingest`[/]")
    console.print(table)


@app.command("costs")
@friendly_errors
def costs_command(
    since: Annotated[
        datetime | None, typer.Option("--since", formats=["%Y-%m-%d"], help="Only provider calls on/after YYYY-MM-DD")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """What the provider calls cost (estimated at the configured prices), per episode and in total."""
    day = since.date() if since else None
    with Database.from_settings(load_settings()) as db:
        by_episode = costs.cost_by_episode(db, since=day)
        total = costs.cost_totals(db, since=day)
    if as_json:
        rows = [{"episode_id": e.episode_id, "title": e.title, **e.totals.as_json()} for e in by_episode]
        print(json.dumps({"since": day.isoformat() if day else None, "episodes": rows, "total": total.as_json()},
                         indent=2, ensure_ascii=False))
        return
    table = Table("episode", "title", "requests", "audio min", "tokens", "cost $", "publisher transcripts", "saved $",
                  title="provider costs" + (f" since {day}" if day else ""))

    def add(label: str, title: str | None, cost: costs.CostTotals) -> None:
        table.add_row(label, escape(title or ""), str(cost.requests), f"{cost.audio_seconds / 60:.2f}", str(cost.tokens),
                      f"{cost.cost_usd:.4f}", str(cost.publisher_transcripts), f"{cost.saved_usd:.4f}")

    for e in by_episode:
        add(e.episode_id or "(deleted episode)", e.title, e.totals)
    table.add_section()
    add("total", None, total)
    console.print(table)


@app.command("ingest")
@friendly_errors
def ingest_command(
    episode_ids: Annotated[list[str] | None, typer.Option("--episodes", "-e", help="Episode ids to (re)process")] = None,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", "-j", min=1, help="Episodes at once")] = None,
    force: Annotated[bool, typer.Option("--force", help="Process every catalogue episode (cached stages are reused)")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be processed, with estimated minutes, tokens and cost")
    ] = False,
) -> None:
    """Run the `ingest` flow in this process: discover feed episodes; download, transcribe, format, export, embed, store."""
    from .progress import IngestProgress

    settings = load_settings(max_parallel_episodes=max_parallel) if max_parallel else load_settings()
    from ..orchestration.runner import EXIT_INTERRUPTED

    with IngestProgress(console) as progress:
        result = _ingest(settings, progress, episode_ids, max_parallel, force, dry_run)
    if result is None:
        return
    _report(settings, progress, result.state)
    if result.state is None:  # interrupted, with episodes still running: their threads are not waited for
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if not result.state.is_completed():
        raise typer.Exit(1)


def _report(settings: Settings, progress: IngestProgress, state: Any) -> None:
    """The run's summary table, each failure's reason in full (once; tracebacks are in the run's log only),
    and its verdict, last: the first line of its state's message (which goes on to list the failures)."""
    console.print(progress.summary_table())
    for episode_id, reason in progress.failures():
        console.print(f"{episode_id}: {settings.scrub(reason)}", markup=False, highlight=False, soft_wrap=True)
    for episode_id, note in progress.transcript_notes():  # why a publisher's transcript was not read
        console.print(f"{episode_id}: {settings.scrub(note)}", markup=False, highlight=False, soft_wrap=True)
    if state is None:
        running = progress.running()
        verdict = f"run interrupted; {len(running)} episodes cut short ({', '.join(running)}): pending for the next run"
    else:
        from ..orchestration.flows import REASONS_AFTER

        verdict = (state.message or state.name).split(REASONS_AFTER)[0]
    console.print(settings.scrub(verdict), markup=False, highlight=False, soft_wrap=True)


def _ingest(settings: Settings, progress: IngestProgress, episode_ids: list[str] | None, max_parallel: int | None,
            force: bool, dry_run: bool) -> Any:
    """`gdr ingest`'s work, said as it goes (`progress.say`); how the run ended (runner.IngestResult), None when no
    run was needed. The first phases are quick and printed over by what follows, so only a terminal shows them."""
    from ..ingest.context import RunContext
    from ..ingest.plan import plan_episodes
    from ..ingest.stages import discover

    progress.say("starting the database", line=False)
    with RunContext.open(settings, progress.on_progress) as ctx:
        progress.say("planning", line=False)
        if dry_run:
            if settings.feed_url:
                discover(ctx)  # registers new feed episodes as pending; downloads nothing
            _print_estimates(settings, ctx.db, plan_episodes(settings, ctx.db, episode_ids or None, force))
            return None
        # Planned once, here: with nothing to do, Prefect is not even started. With feeds, only the flow's
        # discover can tell what is new, so the flow plans.
        plan = None if settings.feed_url else plan_episodes(settings, ctx.db, episode_ids or None, force)
        for episode_id, reason in (plan.skipped if plan else {}).items():
            console.print(f"{episode_id} skipped: {reason}", markup=False, highlight=False, soft_wrap=True)
        if plan is not None and episode_ids:
            for episode_id in plan.up_to_date:
                console.print(f"{episode_id} is up to date (--force runs it again from cache)", highlight=False)
        if plan is not None and not plan.jobs and not plan.invalid:
            if not episode_ids:
                console.print(f"nothing to do: {counted(len(plan.up_to_date), 'episode')} up to date "
                              "(--force runs them again from cache)")
            return None
        for episode_id, reason in (plan.stale if plan else {}).items():
            console.print(f"{episode_id} is stale: {reason}", markup=False, highlight=False, soft_wrap=True)
        progress.say("starting the orchestration server (Prefect)")
        from ..orchestration.runner import run_ingest

        def notify(line: str) -> None:
            err_console.print(line, markup=False, highlight=False, soft_wrap=True)

        return run_ingest(ctx, episode_ids=episode_ids or None, max_parallel=max_parallel, force=force, notify=notify)


def _print_estimates(settings: Settings, db: Database, plan: EpisodePlan) -> None:
    """The dry run's tables: the episodes the run would process, then those it would fail or skip, each with why.
    No provider is called, nothing is downloaded."""
    from ..ingest.estimates import estimate_plan, will_fail

    failing = will_fail(settings, db, plan)
    estimates = [e for e in estimate_plan(settings, db, plan) if e.episode_id not in failing]
    table = Table("episode", "title", "audio min", "est. tokens", "est. cost $", "transcript", "saved $",
                  title=f"would process {counted(len(estimates), 'episode')} ({settings.resolved_transcriber} "
                        f"transcription, {settings.resolved_embedder} embeddings); {len(plan.up_to_date)} up to date")
    for e in estimates:
        minutes = f"{e.audio_seconds / 60:.2f}" if e.audio_seconds is not None else "?"
        table.add_row(e.episode_id, escape(e.title), minutes, str(e.tokens), f"{e.cost_usd:.4f}", escape(e.transcript),
                      f"{e.saved_usd:.4f}")
    table.add_section()
    publisher = sum(e.transcript.startswith(PUBLISHER) for e in estimates)
    table.add_row("total", "", f"{sum(e.audio_seconds or 0 for e in estimates) / 60:.2f}",
                  str(sum(e.tokens for e in estimates)), f"{sum(e.cost_usd for e in estimates):.4f}",
                  f"{publisher} from the publisher", f"{sum(e.saved_usd for e in estimates):.4f}")
    console.print(table)
    for job in plan.jobs:
        if job.transcript_note:
            console.print(f"{job.episode_id}: {job.transcript_note}", markup=False, highlight=False, soft_wrap=True)
    if failing:  # one unwrapped line each: the reasons hold paths
        console.print(f"would fail or skip {counted(len(failing), 'episode')}:")
        for episode_id, (title, verdict, why) in failing.items():
            console.print(f"  {episode_id} ({title}): will {verdict}: {settings.scrub(why)}", markup=False,
                          highlight=False, soft_wrap=True)


@app.command("format")
@friendly_errors
def format_command(
    raw_path: Annotated[Path, typer.Argument(help="A saved raw Deepgram (or local Whisper) response, e.g. X.raw.json")],
    speakers_map: Annotated[str | None, typer.Option("--speakers-map", help='JSON like {"0": "Ann", "1": "Bob"}')] = None,
    out_dir: Annotated[Path | None, typer.Option("-o", "--out-dir", help="Folder for the exports (default: beside RAW)")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", help="Token budget of a chunk (default CHUNK_MAX_TOKENS)")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", help="Longest audio stretch of a chunk (default CHUNK_MAX_SECONDS)")] = None,
) -> None:
    """Re-format a saved raw response into chunks and exports, with no network: tune chunking for free. The chunks
    are the ones `gdr ingest` makes with the same settings."""
    from ..ingest.reformat import reformat_raw

    names = _parse_speakers_map(speakers_map)
    overrides: dict[str, Any] = {"chunk_max_tokens": max_tokens, "chunk_max_seconds": max_seconds}
    settings = Settings(**{name: value for name, value in overrides.items() if value is not None})
    if not raw_path.is_file():
        raise GdrError(f"{raw_path}: no such file")
    try:
        paths = reformat_raw(raw_path, settings, names, out_dir)
    except json.JSONDecodeError as exc:
        raise GdrError(f"{raw_path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    chunks = json.loads(paths["chunks"].read_text(encoding="utf-8"))
    console.print(f"{len(chunks)} chunks from {raw_path}")
    for kind, path in paths.items():
        console.print(f"  {kind:8} {path}")


def _parse_speakers_map(text: str | None) -> dict[str, str]:
    from ..sources.catalogue import speaker_numbers

    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GdrError(f"--speakers-map: not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise GdrError('--speakers-map: expected an object of names, like {"0": "Ann", "1": "Bob"}')
    try:
        return speaker_numbers({str(k): v for k, v in value.items()})
    except ValueError as exc:
        raise GdrError(f"--speakers-map: {exc}") from None
