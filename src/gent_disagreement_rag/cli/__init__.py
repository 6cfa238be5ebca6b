"""`gdr`: the one command-line entry point (plus `seed-db`, which the existing users know).

One module per command group; importing them registers their commands on `app` (cli/common.py).
What only some commands need (the catalogue's pydantic models, the ingest layer, Prefect...) is imported
inside them, so that `gdr search` does not pay for it (BENCHMARKS.md "Design figures").
"""

from . import db, ingest, search, serve, server, speakers  # noqa: F401 (registers the commands)
from .common import app
from .db import seed_db

__all__ = ["app", "seed_db"]
