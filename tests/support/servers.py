"""Running `gdr mcp --http` / `gdr web` as the user does (the real command, in a child process) for a test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gent_disagreement_rag.settings import Settings

START_DEADLINE = 120  # seconds for a server to announce itself (cold imports on 2 shared cores)


def gdr_executable() -> Path:
    """The `gdr` script of the environment running the tests."""
    return Path(sys.executable).parent / "gdr"


def server_environment(settings: Settings) -> dict[str, str]:
    """The variables that point a child `gdr` at a test's database and folders."""
    return {"DATABASE_URL": settings.external_database_url() or "", "GDR_HOME": str(settings.gdr_home),
            "AUDIO_DIR": str(settings.audio_dir), "EPISODES_FILE": str(settings.episodes_file),
            "TRANSCRIPTS_DIR": str(settings.transcripts_dir)}


@contextmanager
def gdr_server(args: list[str], settings: Settings, log: Path, announcement: str) -> Iterator[str]:
    """`gdr ARGS` running until the block ends; yields the URL it announces on stderr after `announcement`.
    Its stderr is copied to `log` (the test's output folder)."""
    process = subprocess.Popen([str(gdr_executable()), *args], env={**os.environ, **server_environment(settings)},
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    announced = threading.Event()
    found: list[str] = []

    def copy_stderr() -> None:
        with log.open("w") as out:
            for line in process.stderr:
                out.write(line)
                out.flush()
                if announcement in line and not found:
                    found.append(line.split(announcement, 1)[1].strip())
                    announced.set()
        announced.set()  # the process ended: wake the waiter, which then sees no URL

    reader = threading.Thread(target=copy_stderr, daemon=True)
    reader.start()
    try:
        announced.wait(START_DEADLINE)
        if not found:
            raise AssertionError(f"`gdr {' '.join(args)}` did not start: {log.read_text()[-2000:]}")
        yield found[0]
    finally:
        stop_process(process, 30)
        reader.join(timeout=30)


def stop_process(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM (a server's clean shutdown), then SIGKILL if it is still running after `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
