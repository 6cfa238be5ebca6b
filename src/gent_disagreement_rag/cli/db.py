"""`gdr db ...` and the legacy `seed-db`: the schema, the catalogue, where the database is."""

from __future__ import annotations

import typer
from rich.table import Table

from ..errors import GdrError
from ..storage import episodes, segments
from ..storage.database import Database
from ..storage.embedded import database_url, stop_embedded
from ..storage.schema import migrate, schema_version
from .common import console, db_app, err_console, friendly_errors, load_settings


@db_app.command("init")
@friendly_errors
def db_init() -> None:
    """Create or migrate the schema (idempotent) and load the episode catalogue."""
    import psycopg

    from ..errors import DatabaseUnavailableError
    from ..sources.catalogue import load_catalogue
    from ..storage.embedded import first_line

    settings = load_settings()
    try:
        applied = migrate(database_url(settings))
    except psycopg.OperationalError as exc:  # one line, as every other command says it (Database.from_settings)
        raise DatabaseUnavailableError(f"cannot connect to Postgres: {first_line(exc)}") from None
    with Database.from_settings(settings) as db:
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
    print(database_url(load_settings()))


@db_app.command("env")
@friendly_errors
def db_env() -> None:
    """Print the DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME lines of the read-only role for another application."""
    from ..storage.reader import CHAT_MODEL_ID, reader_access

    access, hidden = reader_access(load_settings())
    print("\n".join(access.env_lines()))
    if hidden:
        err_console.print(f"[yellow]{hidden} processed episodes have no {CHAT_MODEL_ID} vectors: the chat views leave "
                          "them out[/]", highlight=False)


@db_app.command("status")
@friendly_errors
def db_status() -> None:
    """Schema version, row counts and embedding models."""
    settings = load_settings()
    with Database.from_settings(settings) as db:
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
        for m in models:
            mt.add_row(m.model_id, str(m.dimensions), str(m.vectors))
        console.print(mt)


@db_app.command("reindex")
@friendly_errors
def db_reindex(model: str = typer.Option(None, "--model", help="One embedding model id (default: every model).")) -> None:
    """Rebuild embedding models' HNSW indexes over their stored vectors (after a bulk import), with memory for the
    whole graph, while searches go on."""
    from ..storage.vector_index import rebuild_model_index

    settings = load_settings()
    migrate(database_url(settings))
    with Database.from_settings(settings) as db:
        ids = [model] if model else [m.model_id for m in segments.embedding_model_counts(db)]
        if not ids:
            raise GdrError("no embedding model is registered in this database: nothing to index")
        for model_id in ids:
            done = rebuild_model_index(db, model_id)
            moved = f" (was {done.previous_kind})" if done.previous_kind is not done.kind else ""
            console.print(f"{model_id}: HNSW index over {done.rows:,} vectors rebuilt as {done.kind}{moved}, "
                          f"maintenance_work_mem {done.settings.maintenance_work_mem_mb} MB, "
                          f"{done.settings.parallel_workers} parallel workers", highlight=False)


@db_app.command("stop")
@friendly_errors
def db_stop() -> None:
    """Stop the embedded Postgres (it otherwise keeps running between commands)."""
    settings = load_settings()
    if not settings.uses_embedded_postgres:
        raise GdrError("DATABASE_URL/DB_HOST is set: the external server is not ours to stop")
    console.print("stopped" if stop_embedded(settings) else "not running")
