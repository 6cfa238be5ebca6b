"""Names the storage modules share: the databases on the embedded server and the read-only role.

A module of its own so that the embedded server's access rules (hba.py) and the reader role (reader.py) both
name them without importing each other."""

from __future__ import annotations

APP_DATABASE = "gdr"
PREFECT_DATABASE = "prefect"
READER_ROLE = "gdr_reader"
