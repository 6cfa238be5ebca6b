"""The read-only role for another application (the user's chat server) and for `gdr mcp` / `gdr web`: its password,
its grants, and the connection details it is given.

The chat server connects with psycopg2 from DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME and queries
`transcript_segments`, `episodes` and `speakers` (migration 0004's `chat` views). `gdr db env` prints
those lines for the reader role `gdr_reader`: SELECT on the views only, read-only transactions, and
search_path = chat, public, which is what makes `episodes` mean chat.episodes for it and only for it.
The same role is what `gdr mcp` and `gdr web` read as (reader_url): they also get SELECT on the tables
search reads (SEARCH_TABLES; never the cost ledger), and their connections set search_path = public, so
for them `episodes` is the table the library's statements were written for.

The embedded server listens on a Unix socket only, every local connection trusted; with EMBEDDED_TCP_PORT set
it also listens on 127.0.0.1:PORT for this role only (hba.py). The password is generated once into GDR_HOME (mode 0600);
only its SCRAM verifier is ever sent to the server, so no SQL statement or server log holds it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from ..errors import ConfigError, DatabaseUnavailableError
from ..providers.embedders import CHAT_SERVER_MODEL
from ..settings import Settings
from .embedded import database_url, first_line
from .roles import READER_ROLE
from .rows import first_value
from .schema import migrate, require_current_schema

CHAT_MODEL_ID = str(CHAT_SERVER_MODEL)  # the model of the chat server's questions (migration 0004)
PASSWORD_FILE = "reader-password"
CHAT_VIEWS = ("episodes", "speakers", "transcript_segments")
# What the read-only servers (gdr mcp, gdr web) read through the library's search and browse queries.
SEARCH_TABLES = ("episodes", "segments", "embeddings", "embedding_models")


@dataclass(frozen=True, slots=True)
class ReaderAccess:
    """Where and as whom the chat server connects; the password never shows in repr()."""

    host: str
    port: int
    user: str
    database: str
    password: str = field(repr=False)

    def connect_kwargs(self) -> dict[str, str | int]:
        """psycopg2.connect(**these), as the chat server calls it."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "database": self.database}

    def env_lines(self) -> list[str]:
        return [f"DB_HOST={self.host}", f"DB_PORT={self.port}", f"DB_USER={self.user}",
                f"DB_PASSWORD={self.password}", f"DB_NAME={self.database}"]


def reader_password(home: Path) -> str:
    """The reader's password, generated on first use into GDR_HOME/reader-password, readable by its owner only."""
    path = home / PASSWORD_FILE
    home.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def ensure_reader(url: str, home: Path, *, host: str | None = None, port: int | None = None) -> ReaderAccess:
    """Create or update the reader role on the database at `url` (as its owner); its access, over `host`/`port`
    when given (the embedded server's TCP address), else where `url` points."""
    password = reader_password(home)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            database = conn.info.dbname
            verifier = conn.pgconn.encrypt_password(password.encode(), READER_ROLE.encode(), b"scram-sha-256").decode()
            role = sql.Identifier(READER_ROLE)
            try:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass  # exists already (or another `gdr db env` created it just now)
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}").format(
                role, sql.Literal(verifier)))
            for name, value in (("search_path", "chat, public"), ("default_transaction_read_only", "on")):
                conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                    role, sql.Identifier(database), sql.Identifier(name), sql.SQL(value)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA chat TO {}").format(role))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier("chat", v) for v in CHAT_VIEWS), role))
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
                sql.SQL(", ").join(sql.Identifier("public", t) for t in SEARCH_TABLES), role))
            info_host, info_port = conn.info.host, conn.info.port
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DatabaseUnavailableError(
            f"cannot set up the reader role {READER_ROLE}: {exc.diag.message_primary} (run `gdr db env` as a user "
            "with CREATEROLE that owns the database, or create the role as README says)") from None
    return ReaderAccess(host or info_host, port or info_port, READER_ROLE, database, password)


def reader_access(settings: Settings) -> tuple[ReaderAccess, int]:
    """The reader's connection details for `gdr db env` (schema migrated, role set up), and how many processed
    episodes the chat server cannot see (no text-embedding-3-small@1536 vectors)."""
    if settings.uses_embedded_postgres and settings.embedded_tcp_port is None:
        raise ConfigError(
            "the embedded Postgres listens on a Unix socket only: set EMBEDDED_TCP_PORT (e.g. 5433, in .env) to let "
            f"another application reach it on 127.0.0.1 as {READER_ROLE}, with the password printed here")
    url = database_url(settings)
    migrate(url)
    tcp = ("127.0.0.1", settings.embedded_tcp_port) if settings.uses_embedded_postgres else (None, None)
    access = ensure_reader(url, settings.home, host=tcp[0], port=tcp[1])
    with psycopg.connect(url) as conn:
        hidden = first_value(conn.execute(
            """SELECT count(*) FROM episodes e WHERE e.status = 'processed' AND NOT EXISTS
                 (SELECT 1 FROM embeddings v WHERE v.episode_id = e.episode_id AND v.model_id = %s)""",
            (CHAT_MODEL_ID,)))
    return access, int(hidden)


def reader_ready(url: str) -> bool:
    """Whether the reader role exists and may read everything it is given (checked as the owner, writes nothing)."""
    relations = [f"chat.{v}" for v in CHAT_VIEWS] + [f"public.{t}" for t in SEARCH_TABLES]
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_ROLE,)).fetchone() is None:
            return False
        return all(first_value(conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (READER_ROLE, r)))
                   for r in relations)


def reader_url(settings: Settings) -> str:
    """The connection string the read-only servers use: the settings' database (its schema checked, never
    migrated: SchemaOutOfDateError when behind; the reader role set up once, as `gdr db env` does, when it is
    missing), as READER_ROLE, with search_path = public.

    On the embedded server the Unix socket trusts local users, so the password matters only for a server of
    the user's own; it sits in the string, which is never printed (errors show libpq's first line only)."""
    from psycopg.conninfo import make_conninfo

    url = database_url(settings)
    try:
        with psycopg.connect(url) as conn:
            require_current_schema(conn)
        if not reader_ready(url):
            ensure_reader(url, settings.home)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot connect to Postgres: {first_line(exc)}") from None
    return make_conninfo(url, user=READER_ROLE, password=reader_password(settings.home),
                         options="-c search_path=public")
