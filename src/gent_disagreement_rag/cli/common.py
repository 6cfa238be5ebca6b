"""The `gdr` application, its command groups, its consoles and the one way its commands report errors."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from ..errors import GdrError
from ..settings import Settings, invalid_settings

app = typer.Typer(help="Podcast episodes -> transcripts -> searchable knowledge base.", no_args_is_help=True)
db_app = typer.Typer(help="The database: create/migrate the schema, show where it is.", no_args_is_help=True)
app.add_typer(db_app, name="db")
server_app = typer.Typer(help="A local Prefect server + worker with the ingest/default deployment.", no_args_is_help=True)
app.add_typer(server_app, name="server")
worker_app = typer.Typer(help="A worker of the `default` pool, on this machine, for a server elsewhere.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")
console = Console()
err_console = Console(stderr=True)


def friendly_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Errors we raise on purpose print as one clear line and exit 1, without a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GdrError as exc:
            # One unwrapped line (greppable, copyable paths), printed as is (no markup in messages).
            settings = _safe_settings()
            message = escape(settings.scrub(str(exc)) if settings else str(exc))
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except ValidationError as exc:
            if exc.title != Settings.__name__:
                raise
            err_console.print(f"[bold red]error:[/] {escape(invalid_settings(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """"1 episode", "2 episodes": a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _safe_settings() -> Settings | None:
    try:
        return Settings()
    except Exception:
        return None


def load_settings(**fields: Any) -> Settings:
    """The settings of a command (the environment and .env, then `fields`), with DATABASE_BLOCK read into a URL
    (orchestration.fleet.with_database_block): every command that reaches the database loads them here, so a
    block names the same database for `gdr status`, `gdr search`, `gdr ingest` as for a deployment's run."""
    settings = Settings(**fields)
    if not settings.database_block:
        return settings
    from ..orchestration.fleet import with_database_block  # only then: it imports Prefect

    return with_database_block(settings)
