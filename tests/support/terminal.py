"""A command run on a pseudo-terminal, as a user's shell runs it: what it drew, and how it exited."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path


def run_on_terminal(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """(exit code, everything the command wrote to the terminal until it closed it)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=timeout)
    os.close(controller)
    return proc.returncode, b"".join(chunks).decode(errors="replace")
