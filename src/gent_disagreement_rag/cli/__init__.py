"""`gdr`: the one command-line entry point (plus `seed-db`, which the existing users know)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import GdrError
from ..search.models import DEFAULT_MODE, Mode
from ..settings import Settings, invalid_settings
from ..storage import costs, episodes, segments
from ..storage.database import Database
from ..storage.embedded import database_url, stop_embedded
from ..storage.schema import migrate, schema_version

# What only some commands need (the catalogue's pydantic models, the ingest layer, Prefect...) is imported
# inside them, so that `gdr search` does not pay for it (BENCHMARKS.md "Design figures").
if TYPE_CHECKING:
    from ..ingest.plan import EpisodePlan

app = typer.Typer(help="Podcast episodes -> transcripts -> searchable knowledge base.", no_args_is_help=True)
db_app = typer.Typer(help="The database: create/migrate the schema, show where it is.", no_args_is_help=True)
app.add_typer(db_app, name="db")
server_app = typer.Typer(help="A local Prefect server + worker with the ingest/default deployment.", no_args_is_help=True)
app.add_typer(server_app, name="server")
worker_app = typer.Typer(help="A worker of the `default` pool, on this machine, for a server elsewhere.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
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
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            err_console.print(f"[bold red]error:[/] {escape(invalid_settings(exc))}", highlight=False, soft_wrap=True)
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
    import psycopg

    from ..errors import DatabaseUnavailableError
    from ..sources.catalogue import load_catalogue
    from ..storage.embedded import first_line

    settings = Settings()
    try:
        applied = migrate(database_url(settings))
    except psycopg.OperationalError as exc:  # one line, as every other command says it (Database.from_settings)
        raise DatabaseUnavailableError(f"cannot connect to Postgres: {first_line(exc)}") from None
    with Database.from_settings(settings, migrate_schema=False) as db:
        count = episodes.sync_catalogue(db, load_catalogue(settings.episodes_file)) if settings.episodes_file.exists() else 0
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
    from ..storage.chat_access import CHAT_MODEL_ID, reader_access

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
        counts = episodes.table_counts(db)
        models = segments.embedding_model_counts(db)
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
    """Every episode (catalogue and feed) with its processing status, whether the current settings make
    it stale (and why), and what its provider calls cost.

    Reads only: a catalogue entry the database does not know yet is listed as pending."""
    from ..ingest.plan import stale_reason
    from ..sources.catalogue import catalogue_entries

    settings = Settings()
    entries = catalogue_entries(settings)
    names = {e.episode_id: e.speakers_map for e in entries}
    with open_database(settings) as db:
        rows = [r.as_json() | {"stale": stale_reason(settings, r, names.get(r.episode_id, r.speakers_map))}
                for r in episodes.list_episodes(db)]
    known = {r["episode_id"] for r in rows}
    rows += [episodes.new_entry_json(e) | {"stale": None} for e in entries if e.episode_id not in known]
    if as_json:
        print(json.dumps({"episodes": rows}, indent=2, ensure_ascii=False))
        return
    table = Table("episode", "title", "status", "segments", "cost $", "error / stale because",
                  title=f"{len(rows)} episodes")
    colours = {"processed": "green", "failed": "red", "pending": "yellow"}
    for r in rows:
        status = f"[{colours[r['status']]}]{r['status']}[/]" + (" [yellow](stale)[/]" if r["stale"] else "")
        table.add_row(r["episode_id"], escape(r["title"] or r["file_name"] or ""), status,
                      str(r["segments"]), f"{r['cost_usd']:.4f}", escape((r["error"] or r["stale"] or "")[:160]))
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
    with open_database(Settings()) as db:
        by_episode = costs.cost_by_episode(db, since=day)
        total = costs.cost_totals(db, since=day)
    if as_json:
        rows = [{"episode_id": episode_id, "title": title, **cost.as_json()} for episode_id, title, cost in by_episode]
        print(json.dumps({"since": day.isoformat() if day else None, "episodes": rows, "total": total.as_json()},
                         indent=2, ensure_ascii=False))
        return
    table = Table("episode", "title", "requests", "audio min", "tokens", "cost $",
                  title="provider costs" + (f" since {day}" if day else ""))

    def add(label: str, title: str | None, cost: costs.CostTotals) -> None:
        table.add_row(label, escape(title or ""), str(cost.requests), f"{cost.audio_seconds / 60:.2f}", str(cost.tokens),
                      f"{cost.cost_usd:.4f}")

    for episode_id, title, cost in by_episode:
        add(episode_id or "(deleted episode)", title, cost)
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
    from ..ingest.context import RunContext
    from ..ingest.plan import plan_episodes
    from ..ingest.stages import discover
    from .progress import IngestProgress

    settings = Settings(max_parallel_episodes=max_parallel) if max_parallel else Settings()
    progress = IngestProgress(console)
    with RunContext.open(settings, progress.on_progress) as ctx:
        if dry_run:
            if settings.feed_url:
                discover(ctx)  # registers new feed episodes as pending; downloads nothing
            _print_estimates(settings, ctx.db, plan_episodes(settings, ctx.db, episode_ids or None, force))
            return
        # Planned once, here: with nothing to do, Prefect is not even started. With feeds, only the flow's
        # discover can tell what is new, so the flow plans.
        plan = None if settings.feed_url else plan_episodes(settings, ctx.db, episode_ids or None, force)
        if plan is not None and not plan.jobs and not plan.invalid:
            console.print(f"nothing to do: {len(plan.up_to_date)} episodes up to date (--force runs them again from cache)")
            return
        for episode_id, reason in (plan.stale if plan else {}).items():
            console.print(f"{episode_id} is stale: {reason}", markup=False, highlight=False, soft_wrap=True)
        from ..orchestration.runner import run_ingest

        with progress:
            state = run_ingest(ctx, episode_ids=episode_ids or None, max_parallel=max_parallel, force=force, plan=plan)
    console.print(progress.summary_table())
    for episode_id, reason in progress.failures():  # each in full, once; tracebacks are in the run's log only
        console.print(f"{episode_id}: {settings.scrub(reason)}", markup=False, highlight=False, soft_wrap=True)
    # The run's verdict, last: its first line (the state message goes on to list the failures just printed).
    verdict = (state.message or state.name).splitlines()[0].removesuffix(":")
    console.print(settings.scrub(verdict), markup=False, highlight=False, soft_wrap=True)
    if not state.is_completed():
        raise typer.Exit(1)


def _print_estimates(settings: Settings, db: Database, plan: EpisodePlan) -> None:
    """The dry run's table: no provider is called, nothing is downloaded."""
    from ..ingest.estimates import estimate_plan

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
    from ..orchestration import server

    info = server.start(Settings(), Path.cwd(), port=port)
    console.print(f"Prefect UI: {info.ui_url}  (API {info.api_url}); logs in {info.logs}")
    console.print(f"In another shell: export PREFECT_API_URL={info.api_url}; prefect deployment run ingest/default")


@server_app.command("stop")
@friendly_errors
def server_stop() -> None:
    """Stop the worker and the Prefect server started by `gdr server start`."""
    from ..orchestration import server

    stopped = server.stop(Settings())
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@server_app.command("status")
@friendly_errors
def server_status() -> None:
    """Which of the server and the worker are running."""
    from ..orchestration import server

    pids = server.status(Settings())
    console.print(", ".join(f"{name} (pid {pid})" for name, pid in pids.items()) or "not running")


@server_app.command("publish")
@friendly_errors
def server_publish() -> None:
    """Write this machine's configuration to the Prefect server at PREFECT_API_URL, for the fleet's workers
    (`gdr server start` does it too): database and API-key blocks, the stage-cache block, the settings variable,
    the Deepgram concurrency limit."""
    from ..orchestration import server

    for line in server.publish_fleet(Settings(), _api_url()):
        console.print(line, highlight=False)


@worker_app.command("start")
@friendly_errors
def worker_start() -> None:
    """Start a worker that takes up to MAX_PARALLEL_EPISODES episode runs at once (needs only PREFECT_API_URL)."""
    from ..orchestration import server

    settings = Settings()
    pid = server.start_worker(settings, Path.cwd(), _api_url())
    console.print(f"worker running (pid {pid}); logs in {settings.home / 'logs' / 'worker.log'}")


@worker_app.command("stop")
@friendly_errors
def worker_stop() -> None:
    """Stop the worker started by `gdr worker start` (its episode runs end Crashed and are retried elsewhere)."""
    from ..orchestration import server

    stopped = server.stop(Settings(), only="worker")
    console.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


def _api_url() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise GdrError("PREFECT_API_URL is not set (the server's API, e.g. http://server:4200/api)")
    return url


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
    context: Annotated[int, typer.Option("--context", "-c", min=0, help="Chunks shown before/after each hit")] = 1,
    model: Annotated[str | None, typer.Option("--model", help="Embedding model id (default: the stored one)")] = None,
    min_score: Annotated[
        float, typer.Option("--min-score", min=0.0, max=1.0, help="Only hits with at least this relevance (0-1)")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Search the transcripts: meaning (vector), words (text) or both fused (hybrid)."""
    from ..search import search

    results = search(query, k, episode=episode, speaker=speaker, since=since, mode=mode, context=context,
                     model_id=model, min_score=min_score, settings=Settings())
    if results.notice:
        err_console.print(f"[yellow]{escape(results.notice)}[/]", highlight=False)
    if as_json:
        print(json.dumps({"query": query, "mode": results.mode.value, "model_id": results.model_id,
                          "relevance_basis": results.relevance_basis, "notice": results.notice,
                          "results": [h.as_json() for h in results]},
                         indent=2, ensure_ascii=False))
        return
    if not results:
        return
    title = f"{escape(query)}  [dim]({results.mode.value}{', ' + results.model_id if results.model_id else ''})[/]"
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("#", justify="right")
    table.add_column("relevance")
    table.add_column("episode · speaker · time · link", ratio=2, overflow="fold")
    table.add_column("text", ratio=3)

    def clip(text: str, limit: int = 280) -> str:
        return escape(text if len(text) <= limit else text[: limit - 1].rstrip() + "…")

    for h in results:
        where = f"[bold]{escape(h.title)}[/]\n{escape(h.cited.speaker)}\n{h.cited_range}"
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
        table.add_row(str(h.rank), f"{h.relevance:.2f}", where, text)
    console.print(table)
    err_console.print(f"[dim]relevance: the estimated chance a hit answers the query ({escape(results.relevance_basis)})[/]",
                      highlight=False)


@app.command("format")
@friendly_errors
def format_command(
    raw_path: Annotated[Path, typer.Argument(help="A saved raw Deepgram (or local Whisper) response, e.g. X.raw.json")],
    speakers_map: Annotated[str | None, typer.Option("--speakers-map", help='JSON like {"0": "Ann", "1": "Bob"}')] = None,
    out_dir: Annotated[Path | None, typer.Option("-o", "--out-dir", help="Folder for the exports (default: beside RAW)")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Token budget of a chunk (default CHUNK_MAX_TOKENS)")] = None,
) -> None:
    """Re-format a saved raw response into chunks and exports, with no network: tune chunking for free."""
    from ..ingest.reformat import reformat_raw

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
