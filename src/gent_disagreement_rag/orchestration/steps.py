"""prefect.yaml's pull step: run flows from the checkout that this machine's `gdr` is installed from.

Found when the flow run starts, on the machine that runs it, so that every worker uses its own checkout,
wherever it is (a path written at deploy time would be the deploying machine's).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

CHECKOUT = Path(__file__).resolve().parents[3]  # src/gent_disagreement_rag/orchestration/steps.py


def use_installed_checkout() -> dict[str, str]:
    if not (CHECKOUT / "prefect.yaml").is_file():
        raise ConfigError(f"{CHECKOUT} is not a checkout of this project: install it with `make install` (uv sync) "
                          "from the checkout the worker should run")
    os.chdir(CHECKOUT)
    return {"directory": str(CHECKOUT)}
