"""The connection pool every stage and command uses: psycopg_pool, checked before use, with clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from ..errors import DatabaseUnavailableError
from ..settings import Settings
from .embedded import database_url, first_line
from .schema import migrate, require_current_schema


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)


class Database:
    """A thread-safe pool sized from MAX_PARALLEL_EPISODES; waiters wait, then fail clearly."""

    def __init__(self, url: str, *, max_size: int, timeout: float = 30.0):
        self.url = url
        self.timeout = timeout
        self.registered_models: set[str] = set()  # embedding models whose index is known to exist here
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
    def from_settings(cls, settings: Settings, *, migrate_schema: bool = False, max_size: int | None = None) -> Database:
        """The settings' database with a pool of `max_size` (default: MAX_PARALLEL_EPISODES + 2). Its schema is
        migrated when `migrate_schema` (the commands that write), else checked: SchemaOutOfDateError when behind.
        On the embedded Postgres this starts the server if it is not running (embedded.database_url)."""
        try:
            url = database_url(settings)
            if migrate_schema:
                migrate(url)
            else:  # before the pool: its connections need the schema's `vector` type
                with psycopg.connect(url) as conn:
                    require_current_schema(conn)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailableError(f"cannot connect to Postgres: {first_line(exc)}") from None
        db = cls(url, max_size=max_size or settings.pool_size, timeout=settings.db_pool_timeout)
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
            return DatabaseUnavailableError(f"cannot connect to Postgres: {first_line(exc)}")
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
