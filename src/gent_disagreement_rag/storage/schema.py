"""Versioned SQL migrations (migrations/NNNN_name.sql), applied in order under an advisory lock."""

from __future__ import annotations

from importlib import resources

import psycopg

from ..errors import SchemaOutOfDateError
from .rows import first_value

MIGRATION_LOCK_KEY = 7_413_001  # pg_advisory_lock key serialising concurrent `db init`s


def _migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files(__package__) / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(int(f.name.split("_", 1)[0]), f.name, f.read_text()) for f in files]


def migrate(url: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; safe to run concurrently. Only the
    commands that write (`gdr db init`, `gdr ingest`, `gdr db env`, runs) migrate; the others check."""
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        if _up_to_date(conn):  # read first: a command that only reads (gdr status) writes nothing, not even DDL
            return applied
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in _migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied.append(name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return applied


def _up_to_date(conn: psycopg.Connection) -> bool:
    """Every migration file is applied (read only; a database without the table is not up to date)."""
    if first_value(conn.execute("SELECT to_regclass('schema_migrations')")) is None:
        return False
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    return all(version in done for version, _, _ in _migration_files())


def latest_schema_version() -> int:
    return max(version for version, _, _ in _migration_files())


def schema_version(conn: psycopg.Connection) -> int:
    return int(first_value(conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")))


def require_current_schema(conn: psycopg.Connection) -> None:
    """SchemaOutOfDateError unless every migration of this version is applied (reads nothing else, writes nothing).

    The commands that only read call this instead of migrating: a read is a read."""
    exists = first_value(conn.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL"))
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")} if exists else set()
    conn.commit()  # leave no transaction open on a connection that goes on being used
    if {version for version, _, _ in _migration_files()} <= applied:
        return
    raise SchemaOutOfDateError(
        f"the database schema is at version {max(applied, default=0)} and this gdr needs version "
        f"{latest_schema_version()}: run `gdr db init` (or `gdr ingest`) to migrate it")
