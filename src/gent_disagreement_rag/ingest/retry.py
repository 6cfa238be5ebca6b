"""Which failures a retry can fix, and how long to wait: one policy for stage retries and database calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

from ..errors import DatabaseUnavailableError

T = TypeVar("T")
log = logging.getLogger(__name__)

RETRIES = 4
RETRY_DELAYS = [1.0, 2.0, 4.0, 8.0]  # seconds before retry 1..4 (the orchestration adds jitter)
RETRY_JITTER = 0.5  # each delay is drawn from [delay * (1 - RETRY_JITTER), delay * (1 + RETRY_JITTER)]
MAX_RETRY_AFTER = 120.0  # a provider's Retry-After is honoured up to this


def is_transient(exc: BaseException | None) -> bool:
    """Rate limits, 5xx, timeouts, dropped connections and database hiccups: a later try can succeed."""
    return bool(getattr(exc, "transient", False)) or isinstance(exc, psycopg.OperationalError | DatabaseUnavailableError)


def with_db_retries(func: Callable[..., T], /, *args: object) -> T:
    """A database call retried on transient errors (a restart, a dropped connection) with the stage delays."""
    for delay in RETRY_DELAYS:
        try:
            return func(*args)
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.info("database call %s failed (%s); retrying in %.0f s",
                     getattr(func, "__name__", func), type(exc).__name__, delay)
            time.sleep(delay)
    return func(*args)
