"""Waiting for a condition, and faults injected from a thread whose errors reach the test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Chaos(threading.Thread):
    """A fault injected from a thread; `join` re-raises what went wrong in it (a fault that never happened
    would otherwise leave the test passing, having shown nothing)."""

    def __init__(self, target: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self._fault, self._error = target, None
        self.start()

    def run(self) -> None:
        try:
            self._fault()
        except BaseException as exc:
            self._error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self._error is not None:
            raise self._error
