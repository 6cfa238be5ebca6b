"""The installed entry points (`gdr`, `seed-db`) run as a user runs them, and what their output holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gent_disagreement_rag.storage.schema import _migration_files, latest_schema_version

BIN = Path(sys.executable).parent
CATALOGUE = [{"episode_id": "N-1", "file_name": "N-1.mp3", "title": "First"},
             {"episode_id": "N-2", "file_name": "N-2.mp3", "title": "Second"}]
MIGRATIONS = [name for _, name, _ in _migration_files()]
LATEST = latest_schema_version()  # the highest number, not the count: numbers may leave gaps (0007, 0009)


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """An installed entry point (gdr, seed-db), as a user runs it; the output with its line wrapping undone."""
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True,
                            timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env})
    result.stdout = " ".join(result.stdout.split())
    return result


def table_rows(output: str) -> dict[str, int]:
    """`gdr db status`'s row counts, from its table."""
    return {name: int(n) for name, n in re.findall(r"│ (\w+) +│ (\d+) +│", output)}
