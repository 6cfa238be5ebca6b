"""Secrets never leave: `scrub` replaces every secret value, a mistyped DATABASE_URL is reported without its
password, and end to end no key or password reaches output, logs, artifacts, exports or errors."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gent_disagreement_rag.settings import Settings
from tests.support.fakeapi import (
    DEEPGRAM_KEY,
    EMBEDDINGS,
    LISTEN,
    OPENAI_KEY,
    containing,
    deepgram_error,
    for_audio,
    openai_error,
)
from tests.support.world import DB_PASSWORD, GDR, World, script_transcript


def prefect_texts(since: Any) -> list[str]:
    """Everything the Prefect API holds about runs started after `since`: state messages, logs, artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    texts = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
        ids = [r.id for r in runs]
        assert ids
        texts += [r.model_dump_json() for r in runs]
        texts += [t.model_dump_json() for t in client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)))]
        offset = 0
        while batch := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), offset=offset):
            texts += [log.model_dump_json() for log in batch]
            offset += len(batch)
        texts += [a.model_dump_json() for a in client.read_artifacts() if a.flow_run_id in ids]
    return texts


@pytest.mark.slow
def test_secrets_appear_in_no_output_log_artifact_export_or_error(world: World) -> None:

    url = world.url.replace("postgres:@", f"postgres:{DB_PASSWORD}@")  # trust auth: accepted and ignored
    assert url != world.url
    ids = world.catalogue(["X-0", "X-1", "X-2", "X-3"])
    script_transcript(world, "X-2", "markerx2x")
    # Worst cases: providers that echo the key back in their error text.
    world.api.enqueue(LISTEN, deepgram_error(400, "Bad Request", f"could not read audio sent with key {DEEPGRAM_KEY}"),
                      when=for_audio(world.audio("X-1")))
    world.api.enqueue(EMBEDDINGS, openai_error(401, "invalid_api_key", message=f"Incorrect API key provided: {OPENAI_KEY}"),
                      when=containing("markerx2x"))
    since = datetime.now(UTC)

    ingest = world.gdr("ingest", "-j", "1", DATABASE_URL=url)
    status = world.gdr("status", "--json", DATABASE_URL=url)

    assert ingest.returncode == 1 and status.returncode == 0
    rows = world.rows()
    assert [rows[e].status for e in ids] == ["processed", "failed", "failed", "pending"]
    # A bad key stops the run with one clear message; the episode after it is not started, not failed.
    reason = "AuthenticationError: OpenAI embeddings answered HTTP 401 (invalid_api_key): check OPENAI_API_KEY"
    assert rows["X-2"].last_error == reason
    last_line = ingest.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"run stopped: {reason} (1 episodes not started); 1/4 episodes processed"), last_line
    assert len(world.api.requests_to(EMBEDDINGS)) == 2  # X-0's and X-2's, none for X-3

    texts = {"gdr ingest": ingest.stdout + ingest.stderr, "gdr status": status.stdout + status.stderr}
    texts |= {f"prefect #{i}": text for i, text in enumerate(prefect_texts(since))}
    texts |= {str(p): p.read_text(errors="replace") for p in world.tmp.rglob("*") if p.is_file()}
    for table in ("episodes", "segments", "provider_calls"):
        texts[f"table {table}"] = "\n".join(r[0] for r in world.sql(f"SELECT t::text FROM {table} t"))
    assert len(texts) > 20 and "X-1" in texts["gdr ingest"]
    print(f"\nsecrets: searched {len(texts)} texts ({sum(map(len, texts.values())):,} characters)")
    for secret in (DEEPGRAM_KEY, OPENAI_KEY, DB_PASSWORD):
        leaks = [where for where, text in texts.items() if secret in text]
        assert leaks == [], f"{secret} found in {leaks}"


@pytest.mark.fast
def test_scrub_replaces_every_secret_value() -> None:
    settings = Settings(_env_file=None, deepgram_api_key="dg-secret-1", openai_api_key="sk-secret-2",
                        db_host="db.example", db_password="pw-secret-3")
    text = "dg-secret-1 then sk-secret-2, pw-secret-3; and dg-secret-1 again"
    assert settings.scrub(text) == "*** then ***, ***; and *** again"
    url = "postgresql://u:pw-secret-4@h/db"
    assert Settings(_env_file=None, database_url=url).scrub(f"cannot parse {url}!") == "cannot parse ***!"


def test_a_mistyped_database_url_is_one_line_without_its_password(tmp_path: Path) -> None:
    """libpq quotes a connection string it cannot parse, password and all."""
    url = "postgresql//gdr:pg-pw-Zq81x@127.0.0.1:5432/gdr"  # the ':' after the scheme forgotten
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": url, "GDR_HOME": str(tmp_path / "home")}
    for command in (["db", "status"], ["db", "init"], ["db", "url"], ["ingest"], ["search", "bees"]):
        result = subprocess.run([str(GDR), *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stdout == "" and result.stderr == (
            'error: DATABASE_URL is not a Postgres connection string: missing "=" after "***" in connection info '
            'string\n'), (command, result.stderr)


@pytest.mark.fast
def test_scrub_leaves_text_without_secrets_alone_and_settings_without_secrets_scrub_nothing() -> None:
    assert Settings(_env_file=None, openai_api_key="sk-x1").scrub("no secret here") == "no secret here"
    assert Settings(_env_file=None).scrub("sk-x1") == "sk-x1"
    assert Settings(_env_file=None, openai_api_key="").scrub("a b") == "a b"  # an empty key would match everywhere


@pytest.mark.fast
def test_scrub_replaces_every_secret_by_three_stars() -> None:
    s = Settings(_env_file=None, openai_api_key="sk-x1", db_password="hunter2", db_host="h")
    assert s.scrub("key sk-x1, password hunter2, again sk-x1") == "key ***, password ***, again ***"
