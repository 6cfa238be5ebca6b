"""Settings as the user gives them: DATABASE_URL over the legacy DB_* variables (also from a `.env`), providers
that follow the keys, feed URLs, `.env` and environment, a required secret named in its error."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.storage.embedded import stop_embedded
from tests.support.cli import CATALOGUE, LATEST, run, table_rows


def test_legacy_db_variables_in_a_dotenv_file_connect_to_the_server_they_name(tmp_path: Path, fresh_db_url: str) -> None:
    """No DATABASE_URL anywhere: `.env` in the working directory names the server the old way. The session's
    Postgres listens on a Unix socket only, so DB_HOST is its socket directory, as libpq (and psycopg2, which the
    old codebase used) accept."""
    parts = conninfo_to_dict(fresh_db_url)
    episodes = tmp_path / "episodes.json"
    episodes.write_text(json.dumps(CATALOGUE))
    (tmp_path / ".env").write_text(
        f"DB_HOST={parts['host']}\nDB_PORT={parts.get('port', 5432)}\nDB_USER={parts['user']}\n"
        f"DB_PASSWORD=pw-dotenv-7Hq2\nDB_NAME={parts['dbname']}\nEPISODES_FILE={episodes}\nGDR_HOME={tmp_path / 'home'}\n")
    try:
        init = run(["gdr", "db", "init"], tmp_path)
        assert init.returncode == 0, init.stderr
        assert init.stdout == f"schema version {LATEST} (up to date); 2 catalogue episodes loaded from {episodes}"
        with psycopg.connect(fresh_db_url) as conn:  # the database DB_NAME named, not another
            assert [r[0] for r in conn.execute("SELECT episode_id FROM episodes ORDER BY 1")] == ["N-1", "N-2"]
        status = run(["gdr", "db", "status"], tmp_path)
        assert status.stdout.startswith(f"external Postgres; schema version {LATEST} ")
        assert table_rows(status.stdout)["episodes"] == 2
        assert "pw-dotenv-7Hq2" not in init.stdout + init.stderr + status.stdout + status.stderr
    finally:  # had the variables been ignored, an embedded server would have been started under the cwd
        for home in (tmp_path / ".gdr", tmp_path / "home"):
            stop_embedded(Settings(_env_file=None, gdr_home=home))


@pytest.mark.fast
def test_legacy_db_variables_make_the_url_and_their_password_is_a_secret() -> None:
    s = Settings(_env_file=None, db_host="db.example", db_port=6543, db_user="ann marie", db_password="p@ss/1",
                 db_name="gent")
    assert s.external_database_url() == "postgresql://ann%20marie:p%40ss%2F1@db.example:6543/gent"
    assert not s.uses_embedded_postgres and s.secrets == ["p@ss/1"]
    assert Settings(_env_file=None, db_host="h").external_database_url() == "postgresql://postgres@h:5432/gent_disagreement"
    assert Settings(_env_file=None).external_database_url() is None and Settings(_env_file=None).uses_embedded_postgres


@pytest.mark.fast
def test_database_url_wins_over_the_legacy_variables() -> None:
    s = Settings(_env_file=None, database_url="postgresql://x@y/z", db_host="h")
    assert s.external_database_url() == "postgresql://x@y/z" and s.secrets == ["postgresql://x@y/z"]


@pytest.mark.fast
def test_auto_providers_follow_the_keys() -> None:
    assert (Settings(_env_file=None).resolved_transcriber, Settings(_env_file=None).resolved_embedder) == ("local", "local")
    keyed = Settings(_env_file=None, deepgram_api_key="d", openai_api_key="o")
    assert (keyed.resolved_transcriber, keyed.resolved_embedder) == ("deepgram", "openai")
    forced = Settings(_env_file=None, deepgram_api_key="d", openai_api_key="o", transcriber="local", embedder="local")
    assert (forced.resolved_transcriber, forced.resolved_embedder) == ("local", "local")
    assert Settings(_env_file=None, max_parallel_episodes=5).pool_size == 7


@pytest.mark.fast
def test_feed_urls_are_a_json_list_or_comma_separated() -> None:
    assert Settings(_env_file=None, feed_url="https://a/x, https://b/y,").feed_url == ["https://a/x", "https://b/y"]
    assert Settings(_env_file=None, feed_url='["https://a/x"]').feed_url == ["https://a/x"]


@pytest.mark.fast
def test_env_file_and_environment_are_read(tmp_path, monkeypatch) -> None:
    """A developer's `.env` is read; the environment wins over it."""
    env = tmp_path / ".env"
    env.write_text("DB_HOST=from-dotenv\nCHUNK_MAX_TOKENS=99\nSKIP_QUALITY_GATE=true\n")
    monkeypatch.setenv("CHUNK_MAX_TOKENS", "120")
    s = Settings(_env_file=env)
    assert (s.db_host, s.chunk_max_tokens, s.skip_quality_gate) == ("from-dotenv", 120, True)


@pytest.mark.fast
def test_require_secret_names_the_variable() -> None:
    from gent_disagreement_rag.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY is not set \(needed for EMBEDDER=openai\)$"):
        Settings(_env_file=None, openai_api_key="").require_secret("openai_api_key", "EMBEDDER=openai")
    assert Settings(_env_file=None, openai_api_key="k").require_secret("openai_api_key", "x") == "k"


@pytest.mark.fast
def test_legacy_db_url_quotes_a_slash_in_the_user_and_the_database_name() -> None:
    s = Settings(_env_file=None, db_host="h", db_user="team/ann", db_password="pw", db_name="gent/prod")
    assert s.external_database_url() == "postgresql://team%2Fann:pw@h:5432/gent%2Fprod"
    # A socket directory as the host (as psycopg2's host= took it) is percent-encoded, not read as the path.
    socket = Settings(_env_file=None, db_host="/var/run/postgresql").external_database_url()
    assert socket == "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql:5432/gent_disagreement"
