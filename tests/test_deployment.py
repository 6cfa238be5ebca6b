"""The deployment a user runs: prefect.yaml schedules ingest nightly, one run at a time, as the README says."""

from __future__ import annotations

import yaml

from tests.support.paths import REPO_ROOT


def test_prefect_yaml_schedules_ingest_nightly_one_run_at_a_time_as_the_readme_says() -> None:
    from gent_disagreement_rag.orchestration.flows import ingest

    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    by_entrypoint = {d["entrypoint"]: d for d in config["deployments"]}
    assert set(by_entrypoint) == {"flows/ingest.py:ingest"}  # its episodes go to the task runner, not to deployments
    nightly = by_entrypoint["flows/ingest.py:ingest"]
    assert (nightly["name"], nightly["work_pool"]["name"], nightly["concurrency_limit"]) == ("default", "default", 1)
    [schedule] = nightly["schedules"]
    assert schedule == {"cron": "0 2 * * *", "timezone": "America/New_York", "active": True}
    assert nightly["parameters"] == {"episode_ids": None, "max_parallel": None, "force": False}
    assert ingest.timeout_seconds == 23 * 3600

    minute, hour, *every = schedule["cron"].split()
    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert every == ["*", "*", "*"]  # every day
    assert (f"`ingest/default` runs nightly at {int(hour):02d}:{int(minute):02d} {schedule['timezone']}" in readme
            and f"`concurrency_limit: {nightly['concurrency_limit']}`" in readme and "23-hour timeout" in readme)
