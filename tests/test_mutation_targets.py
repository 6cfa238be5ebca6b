"""Fast tests of the pure logic that `make mutate` mutates (TESTING.md): batching, scrubbing, settings that
decide where secrets and databases are. Expected values are worked out by hand."""

from __future__ import annotations

import pytest

from gent_disagreement_rag.providers.embedders.openai import pack
from gent_disagreement_rag.settings import Settings


@pytest.mark.parametrize(
    ("counts", "ranges"),
    [
        ([], []),
        ([5], [(0, 1)]),
        ([1001] * 600, [(0, 299), (299, 598), (598, 600)]),
        ([300_000, 1], [(0, 1), (1, 2)]),  # a request exactly at the limit
        ([299_999, 1], [(0, 2)]),
        ([299_999, 2], [(0, 1), (1, 2)]),
        ([1] * 2049, [(0, 2048), (2048, 2049)]),  # 2048 inputs at most
        ([1] * 2048, [(0, 2048)]),
        ([400_000, 5], [(0, 1), (1, 2)]),  # one oversized input alone (the embedder rejects it before)
    ],
)
def test_pack_keeps_each_request_within_2048_inputs_and_300k_tokens(counts, ranges) -> None:
    assert [(r.start, r.stop) for r in pack(counts)] == ranges


def test_scrub_leaves_text_without_secrets_alone_and_settings_without_secrets_scrub_nothing() -> None:
    assert Settings(_env_file=None, openai_api_key="sk-x1").scrub("no secret here") == "no secret here"
    assert Settings(_env_file=None).scrub("sk-x1") == "sk-x1"
    assert Settings(_env_file=None, openai_api_key="").scrub("a b") == "a b"  # an empty key would match everywhere


def test_legacy_db_variables_make_the_url_and_their_password_is_a_secret() -> None:
    s = Settings(_env_file=None, db_host="db.example", db_port=6543, db_user="ann marie", db_password="p@ss/1",
                 db_name="gent")
    assert s.external_database_url() == "postgresql://ann%20marie:p%40ss%2F1@db.example:6543/gent"
    assert not s.uses_embedded_postgres and s.secrets == ["p@ss/1"]
    assert Settings(_env_file=None, db_host="h").external_database_url() == "postgresql://postgres@h:5432/gent_disagreement"
    assert Settings(_env_file=None).external_database_url() is None and Settings(_env_file=None).uses_embedded_postgres


def test_database_url_wins_over_the_legacy_variables() -> None:
    s = Settings(_env_file=None, database_url="postgresql://x@y/z", db_host="h")
    assert s.external_database_url() == "postgresql://x@y/z" and s.secrets == ["postgresql://x@y/z"]


def test_auto_providers_follow_the_keys() -> None:
    assert (Settings(_env_file=None).resolved_transcriber, Settings(_env_file=None).resolved_embedder) == ("local", "local")
    keyed = Settings(_env_file=None, deepgram_api_key="d", openai_api_key="o")
    assert (keyed.resolved_transcriber, keyed.resolved_embedder) == ("deepgram", "openai")
    forced = Settings(_env_file=None, deepgram_api_key="d", openai_api_key="o", transcriber="local", embedder="local")
    assert (forced.resolved_transcriber, forced.resolved_embedder) == ("local", "local")
    assert Settings(_env_file=None, max_parallel_episodes=5).pool_size == 7


def test_feed_urls_are_a_json_list_or_comma_separated() -> None:
    assert Settings(_env_file=None, feed_url="https://a/x, https://b/y,").feed_url == ["https://a/x", "https://b/y"]
    assert Settings(_env_file=None, feed_url='["https://a/x"]').feed_url == ["https://a/x"]


def test_env_file_and_environment_are_read(tmp_path, monkeypatch) -> None:
    """A developer's `.env` is read; the environment wins over it."""
    env = tmp_path / ".env"
    env.write_text("DB_HOST=from-dotenv\nCHUNK_MAX_TOKENS=99\nSKIP_QUALITY_GATE=true\n")
    monkeypatch.setenv("CHUNK_MAX_TOKENS", "120")
    s = Settings(_env_file=env)
    assert (s.db_host, s.chunk_max_tokens, s.skip_quality_gate) == ("from-dotenv", 120, True)


def test_require_secret_names_the_variable() -> None:
    from gent_disagreement_rag.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^OPENAI_API_KEY is not set \(needed for EMBEDDER=openai\)$"):
        Settings(_env_file=None, openai_api_key="").require_secret("openai_api_key", "EMBEDDER=openai")
    assert Settings(_env_file=None, openai_api_key="k").require_secret("openai_api_key", "x") == "k"
