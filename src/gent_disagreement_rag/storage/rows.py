"""Reading a statement's rows."""

from __future__ import annotations

from typing import Any

import psycopg


def first_value(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of the one row a statement always returns (an aggregate, a function's value)."""
    row = cursor.fetchone()
    if row is None:
        raise psycopg.ProgrammingError("the statement returned no row")
    return row[0]
