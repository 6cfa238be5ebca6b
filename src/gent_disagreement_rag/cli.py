"""`gdr`: the one command-line entry point (plus `seed-db`, which the existing users know)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import store
from .database import Database, database_url, migrate, schema_version, stop_embedded
from .errors import GdrError
from .search import DEFAULT_MODE, Mode
from .settings import Settings

# What only some commands need (the catalogue's pydantic models, the pipeline, Prefect...) is imported inside
# them: every `gdr search` paid for it (~0.3 s of CPU for the catalogue and feeds modules alone).
if TYPE_CHECKING:
    from .pipeline import EpisodePlan

app = typer.Typer(help="Podcast episodes -> transcripts -> searchable knowledge base.", no_args_is_help=True)
db_app = typer.Typer(help="The database: create/migrate the schema, show where it is.", no_args_is_help=True)
app.add_typer(db_app, name="db")
server_app = typer.Typer(help="A local Prefect server + worker with the ingest/default deployment.", no_args_is_help=True)
app.add_typer(server_app, name="server")
console = Console()
err_console = Console(stderr=True)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Errors we raise on purpose print as one clear line and exit 1, without a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GdrError as exc:
            # One unwrapped line (greppable, copyable paths), printed as is (no markup in messages).
            settings = _safe_settings()
            message = escape(settings.scrub(str(exc)) if settings else str(exc))
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _safe_settings() -> Settings | None:
    try:
        return Settings()
    except Exception:
        return None


def open_database(settings: Settings) -> Database:
    return Database.from_settings(settings)


@db_app.command("init")
@friendly_errors
def db_init() -> None:
    """Create or migrate the schema (idempotent) and load the episode catalogue."""
    from .catalogue import load_catalogue

    settings = Settings()
    applied = migrate(database_url(settings))
    with Database.from_settings(settings, migrate_schema=False) as db:
        count = store.sync_catalogue(db, load_catalogue(settings.episodes_file)) if settings.episodes_file.exists() else 0
        with db.connection() as conn:
            version = schema_version(conn)
    console.print(
        f"schema version {version} ({'applied ' + ', '.join(applied) if applied else 'up to date'}); "
        f"{count} catalogue episodes loaded from {settings.episodes_file}"
    )


seed_db = typer.Typer(help="Legacy name of `gdr db init` (the old README's `poetry run seed-db`).")
seed_db.command()(db_init)


@db_app.command("url")
@friendly_errors
def db_url() -> None:
    """Print the URL to connect with psql (starts the embedded server if needed)."""
    print(database_url(Settings()))


@db_app.command("env")
@friendly_errors
def db_env() -> None:
    """Print the DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME lines of the read-only role for another application."""
    from .chat_access import CHAT_MODEL_ID, reader_access

    access, hidden = reader_access(Settings())
    print("\n".join(access.env_lines()))
    if hidden:
        err_console.print(f"[yellow]{hidden} processed episodes have no {CHAT_MODEL_ID} vectors: the chat views leave "
                          "them out[/]", highlight=False)


@db_app.command("status")
@friendly_errors
def db_status() -> None:
    """Schema version, row counts and embedding models."""
    settings = Settings()
    with open_database(settings) as db:
        with db.connection() as conn:
            version = schema_version(conn)
        counts = store.table_counts(db)
        models = store.embedding_model_counts(db)
    where = "embedded Postgres at " + str(settings.pgdata) if settings.uses_embedded_postgres else "external Postgres"
    console.print(f"{where}; schema version {version}")
    table = Table("table", "rows")
    for name, rows in counts.items():
        table.add_row(name, str(rows))
    console.print(table)
    if models:
        mt = Table("embedding model", "dimensions", "vectors")
        for model_id, dims, rows in models:
            mt.add_row(model_id, str(dims), str(rows))
        console.print(mt)


@db_app.command("stop")
@friendly_errors
def db_stop() -> None:
    """Stop the embedded Postgres (it otherwise keeps running between commands)."""
    settings = Settings()
    if not settings.uses_embedded_postgres:
        raise GdrError("DATABASE_URL/DB_HOST is set: the external server is not ours to stop")
    console.print("stopped" if stop_embedded(settings) else "not running")


@app.command("status")
@friendly_errors
def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False) -> None:
    """Every episode (catalogue and feed) with its processing status and what its provider calls cost."""
    from .catalogue import catalogue_entries

    settings = Settings()
    entries = catalogue_entries(settings)
    with open_database(settings) as db:
        store.sync_catalogue(db, entries)
        rows = store.list_episodes(db)
    if as_json:
        print(json.dumps({"episodes": [r.as_json() for r in rows]}, indent=2, ensure_ascii=False))
        return
    table = Table("episode", "title", "status", "segments", "cost $", "error", title=f"{len(rows)} episodes")
    colours = {"processed": "green", "failed": "red", "pending": "yellow"}
    for r in rows:
        table.add_row(r.episode_id, escape(r.title or r.file_name or ""), f"[{colours[r.status]}]{r.status}[/]",
                      str(r.segments), f"{r.cost_usd:.4f}", (r.last_error or "")[:80])
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
    with open_database(Settings()) as db:
        episodes = store.cost_by_episode(db, since=day)
        total = store.cost_totals(db, since=day)
    if as_json:
        rows = [{"episode_id": episode_id, "title": title, **cost.as_json()} for episode_id, title, cost in episodes]
        print(json.dumps({"since": day.isoformat() if day else None, "episodes": rows, "total": total.as_json()},
                         indent=2, ensure_ascii=False))
        return
    table = Table("episode", "title", "requests", "audio min", "tokens", "cost $",
                  title="provider costs" + (f" since {day}" if day else ""))

    def add(label: str, title: str | None, cost: store.CostTotals) -> None:
        table.add_row(label, escape(title or ""), str(cost.requests), f"{cost.audio_seconds / 60:.2f}", str(cost.tokens),
                      f"{cost.cost_usd:.4f}")

    for episode_id, title, cost in episodes:
        add(episode_id or "(deleted episode)", title, cost)
    table.add_section()
    add("total", None, total)
    console.print(table)


@app.command("ingest")
@friendly_errors
def ingest_command(
    episodes: Annotated[list[str] | None, typer.Option("--episodes", "-e", help="Episode ids to (re)process")] = None,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", "-j", min=1, help="Episodes at once")] = None,
    force: Annotated[bool, typer.Option("--force", help="Process every catalogue episode (cached stages are reused)")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be processed, with estimated minutes, tokens and cost")
    ] = False,
) -> None:
    """Run the `ingest` flow in this process: discover feed episodes; download, transcribe, format, export, embed, store."""
    settings = Settings()
    from .pipeline import discover, plan_episodes

    with open_database(settings) as db:
        if dry_run and settings.feed_url:
            discover(settings, db)  # registers new feed episodes as pending; downloads nothing
        plan = plan_episodes(settings, db, episodes or None, force)
        if dry_run:
            _print_estimates(settings, db, plan)
            return
    # Skip starting Prefect at all when there is nothing to do (with feeds, only the flow's discover can tell).
    if not plan.jobs and not plan.invalid and not settings.feed_url:
        console.print(f"nothing to do: {len(plan.up_to_date)} episodes up to date (--force runs them again from cache)")
        return
    from .prefect_env import apply_prefect_environment

    apply_prefect_environment(settings)
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")  # the live table replaces per-task lines
    from .ingest_progress import IngestProgress

    # The temporary API server cancels its event recorder on exit and logs the CancelledError: noise, not a failure.
    logging.getLogger("prefect.server.services.task_run_recorder").disabled = True

    with IngestProgress(console) as progress:
        state = progress.run(episode_ids=episodes or None, max_parallel=max_parallel, force=force)
    console.print(progress.summary_table())
    console.print(state.message or state.name, markup=False, highlight=False, soft_wrap=True)  # one line, as is
    if not state.is_completed():
        raise typer.Exit(1)


def _print_estimates(settings: Settings, db: Database, plan: EpisodePlan) -> None:
    """The dry run's table: no provider is called, nothing is downloaded."""
    from .estimates import estimate_plan

    estimates = estimate_plan(settings, db, plan)
    table = Table("episode", "title", "audio min", "est. tokens", "est. cost $",
                  title=f"would process {len(estimates)} episodes ({settings.resolved_transcriber} transcription, "
                        f"{settings.resolved_embedder} embeddings); {len(plan.up_to_date)} up to date")
    for e in estimates:
        minutes = f"{e.audio_seconds / 60:.2f}" if e.audio_seconds is not None else "?"
        table.add_row(e.episode_id, escape(e.title), minutes, str(e.tokens), f"{e.cost_usd:.4f}")
    table.add_section()
    table.add_row("total", "", f"{sum(e.audio_seconds or 0 for e in estimates) / 60:.2f}",
                  str(sum(e.tokens for e in estimates)), f"{sum(e.cost_usd for e in estimates):.4f}")
    console.print(table)
    for episode_id, error in plan.invalid.items():
        err_console.print(f"[red]{episode_id}: cannot start:[/] {settings.scrub(error)}", highlight=False)


@server_app.command("start")
@friendly_errors
def server_start(
    port: Annotated[int, typer.Option(help="Port of the API and UI on 127.0.0.1")] = 4200,
) -> None:
    """Start the Prefect server (on the project's Postgres), the `default` pool, the deployment and a worker."""
    from . import services

    info = services.start(Settings(), Path.cwd(), port=port)
    console.print(f"Prefect UI: {info.ui_url}  (API {info.api_url}); logs in {info.logs}")
    console.print(f"In another shell: export PREFECT_API_URL={info.api_url}; prefect deployment run ingest/default")


@server_app.command("stop")
@friendly_errors
def server_stop() -> None:
    """Stop the worker and the Prefect server started by `gdr server start`."""
    from . import services

    stopped = services.stop(Settings())
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@server_app.command("status")
@friendly_errors
def server_status() -> None:
    """Which of the server and the worker are running."""
    from . import services

    pids = services.status(Settings())
    console.print(", ".join(f"{name} (pid {pid})" for name, pid in pids.items()) or "not running")


@app.command("search")
@friendly_errors
def search_command(
    query: Annotated[str, typer.Argument(help="A question or keywords")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="Number of results")] = 5,
    episode: Annotated[str | None, typer.Option("--episode", "-e", help="Only this episode id")] = None,
    speaker: Annotated[
        str | None,
        typer.Option("--speaker", "-s", help="Only this speaker: full name or leading name(s), case-insensitive"),
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only episodes published on/after YYYY-MM-DD")] = None,
    mode: Annotated[Mode, typer.Option("--mode", "-m", case_sensitive=False, help="Ranking")] = DEFAULT_MODE,
    context: Annotated[int, typer.Option("--context", "-c", min=0, help="Chunks before/after each hit")] = 0,
    model: Annotated[str | None, typer.Option("--model", help="Embedding model id (default: the stored one)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Search the transcripts: meaning (vector), words (text) or both fused (hybrid)."""
    from .search import search

    results = search(query, k, episode=episode, speaker=speaker, since=since, mode=mode, context=context,
                     model_id=model, settings=Settings())
    if results.notice:
        err_console.print(f"[yellow]{escape(results.notice)}[/]", highlight=False)
    if as_json:
        print(json.dumps({"query": query, "mode": results.mode.value, "model_id": results.model_id,
                          "notice": results.notice, "results": [h.as_json() for h in results]},
                         indent=2, ensure_ascii=False))
        return
    if not results:
        return
    title = f"{escape(query)}  [dim]({results.mode.value}{', ' + results.model_id if results.model_id else ''})[/]"
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("#", justify="right")
    table.add_column("score")
    table.add_column("episode · speaker · time · link", ratio=2, overflow="fold")
    table.add_column("text", ratio=3)

    def clip(text: str, limit: int = 280) -> str:
        return escape(text if len(text) <= limit else text[: limit - 1].rstrip() + "…")

    for h in results:
        where = f"[bold]{escape(h.title)}[/]\n{escape(', '.join(h.speakers))}\n{h.time_range}"
        if h.link:
            where += f"\n[dim][link={escape(h.link)}]{escape(h.link)}[/link][/]"
        if len(h.segments) == 1:
            text = clip(h.text)
        else:
            text = "\n".join(
                f"[bold]{escape(s.speaker)}:[/] {clip(s.text)}" if s.position in h.matched_positions
                else f"[dim]{escape(s.speaker)}: {clip(s.text)}[/]"
                for s in h.segments
            )
        table.add_row(str(h.rank), f"{h.score:.4f}", where, text)
    console.print(table)


@app.command("format")
@friendly_errors
def format_command(
    raw_path: Annotated[Path, typer.Argument(help="A saved raw Deepgram (or local Whisper) response, e.g. X.raw.json")],
    speakers_map: Annotated[str | None, typer.Option("--speakers-map", help='JSON like {"0": "Ann", "1": "Bob"}')] = None,
    out_dir: Annotated[Path | None, typer.Option("-o", "--out-dir", help="Folder for the exports (default: beside RAW)")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Token budget of a chunk (default CHUNK_MAX_TOKENS)")] = None,
) -> None:
    """Re-format a saved raw response into chunks and exports, with no network: tune chunking for free."""
    from .exports import reformat_raw

    names = _parse_speakers_map(speakers_map)
    if not raw_path.is_file():
        raise GdrError(f"{raw_path}: no such file")
    try:
        paths = reformat_raw(raw_path, names, out_dir, max_tokens or Settings().chunk_max_tokens)
    except json.JSONDecodeError as exc:
        raise GdrError(f"{raw_path}: not valid JSON: {exc.msg} at line {exc.lineno}") from None
    chunks = json.loads(paths["chunks"].read_text(encoding="utf-8"))
    console.print(f"{len(chunks)} chunks from {raw_path}")
    for kind, path in paths.items():
        console.print(f"  {kind:8} {path}")


def _parse_speakers_map(text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GdrError(f"--speakers-map: not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise GdrError('--speakers-map: expected an object of names, like {"0": "Ann", "1": "Bob"}')
    return {str(k): v for k, v in value.items()}
