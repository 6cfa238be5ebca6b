"""`gdr db stop` prints its answer and nothing else: no RuntimeDirWarning where XDG_RUNTIME_DIR is unset
(containers, CI, a root shell), a warning nobody can act on. A real `gdr` process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GDR = Path(sys.executable).parent / "gdr"


def test_db_stop_without_xdg_runtime_dir_prints_no_warning(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "DATABASE_URL", "DB_HOST")}
    env |= {"GDR_HOME": str(tmp_path / "home"), "PYTHONWARNINGS": "default"}
    result = subprocess.run([str(GDR), "db", "stop"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "not running\n", "")
