"""Configuration a fleet of workers shares through the Prefect server, so that a machine with only
PREFECT_API_URL can process episodes: the database as a prefect-sqlalchemy SqlAlchemyConnector block, the
API keys as Secret blocks, the stage cache as a storage block (also the server's default result storage),
the other settings as one Prefect variable, and Deepgram's request cap as a global concurrency limit.

`publish` (run by `gdr server start`, or `gdr server publish`) writes them from this machine's settings;
`fleet_settings` reads them, once per run, under whatever the worker's own environment sets.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import URL, make_url

from ..errors import ConfigError
from ..settings import Settings
from ..storage.embedded import database_url, first_line

DATABASE_BLOCK = "gdr-database"
SECRET_BLOCKS = {"deepgram_api_key": "gdr-deepgram-api-key", "openai_api_key": "gdr-openai-api-key"}
STAGE_CACHE_BLOCK = "gdr-stage-cache"
SETTINGS_VARIABLE = "gdr_settings"
DEEPGRAM_LIMIT = "gdr-deepgram-requests"
# Settings that belong to one machine, or that are secrets (those travel as blocks), are not shared.
LOCAL_ONLY = frozenset({"database_url", "db_host", "db_port", "db_user", "db_password", "db_name", "database_block",
                        "gdr_home", "worker_name", "deepgram_api_key", "openai_api_key", "cache_dir", "notify_url"})


def _connection_components(url: str) -> Any:
    from prefect_sqlalchemy import ConnectionComponents

    parts = make_url(url)
    return ConnectionComponents(
        driver="postgresql+psycopg", database=parts.database, username=parts.username,
        password=parts.password, host=parts.host, port=parts.port, query=dict(parts.query),
    )


def block_database_url(name: str) -> str:
    """The psycopg URL of a SqlAlchemyConnector block (its credentials; our pool and COPY stay psycopg's)."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    info = SqlAlchemyConnector.load(name).connection_info
    if not hasattr(info, "driver"):  # the block holds a URL
        return make_url(str(info)).set(drivername="postgresql").render_as_string(hide_password=False)
    password = info.password.get_secret_value() if info.password else None
    return URL.create("postgresql", info.username, password, info.host, info.port, info.database,
                      info.query or {}).render_as_string(hide_password=False)


def with_database_block(settings: Settings) -> Settings:
    """The settings with DATABASE_BLOCK's URL as DATABASE_URL (the block wins over DATABASE_URL/DB_*), and
    DATABASE_BLOCK cleared: read. The one place a block name becomes a URL: every command (cli.common.load_settings)
    and every flow run (fleet_settings) go through here, so storage only ever sees a plain URL.

    The block is read from the Prefect server PREFECT_API_URL names (never a server started for the purpose);
    a missing block, or no server, is a ConfigError naming DATABASE_BLOCK."""
    name = settings.database_block
    if not name:
        return settings
    import httpx
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise ConfigError(f"DATABASE_BLOCK={name} names a block on a Prefect server, but PREFECT_API_URL is not set: "
                          "set it to that server's API URL (or set DATABASE_URL instead)")
    try:
        url = block_database_url(name)
    except ValueError:
        raise ConfigError(f"DATABASE_BLOCK={name}: the Prefect server at {api_url} has no SqlAlchemyConnector block "
                          f"of that name (`gdr server publish` writes {DATABASE_BLOCK!r}; or create it)") from None
    except (httpx.HTTPError, OSError, RuntimeError) as exc:
        raise ConfigError(f"DATABASE_BLOCK={name}: cannot read it from the Prefect server at {api_url}: "
                          f"{type(exc).__name__}: {first_line(exc)}") from None
    return settings.model_copy(update={"database_url": SecretStr(url), "database_block": None})


def publish(settings: Settings) -> list[str]:
    """Write the fleet's configuration to the Prefect server (PREFECT_API_URL); returns what was written."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.filesystems import LocalFileSystem
    from prefect.variables import Variable
    from prefect_sqlalchemy import SqlAlchemyConnector

    written = []
    SqlAlchemyConnector(connection_info=_connection_components(database_url(with_database_block(settings)))).save(
        DATABASE_BLOCK, overwrite=True)
    written.append(f"sqlalchemy-connector/{DATABASE_BLOCK}")
    for field, block in SECRET_BLOCKS.items():
        value: SecretStr | None = getattr(settings, field)
        if value is not None and value.get_secret_value():
            Secret(value=value.get_secret_value()).save(block, overwrite=True)
            written.append(f"secret/{block}")
    storage_block = settings.result_storage_block
    if storage_block is None:  # the stage cache of this machine, for workers that share its folder
        storage = LocalFileSystem(basepath=str(settings.result_storage_path))
        block_id = storage.save(STAGE_CACHE_BLOCK, overwrite=True)
        storage_block = f"local-file-system/{STAGE_CACHE_BLOCK}"
        with get_client(sync_client=True) as client:
            client.update_server_default_result_storage(block_id)  # type: ignore[arg-type]  # Prefect types its sync-or-async functions as returning either
        written.append(storage_block + " (also the server's default result storage)")
    shared = settings.model_dump(mode="json", exclude=set(LOCAL_ONLY))
    Variable.set(SETTINGS_VARIABLE, {**shared, "result_storage_block": storage_block}, overwrite=True)
    written.append(f"variable/{SETTINGS_VARIABLE}")
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(DEEPGRAM_LIMIT, settings.deepgram_max_concurrency)
    written.append(f"global-concurrency-limit/{DEEPGRAM_LIMIT} ({settings.deepgram_max_concurrency})")
    return written


def fleet_settings(**overrides: Any) -> Settings:
    """This machine's settings over the fleet's: what the worker's environment (or `overrides`) sets wins,
    the rest comes from the server (the variable, the Secret blocks, the database block)."""
    from prefect.blocks.system import Secret
    from prefect.variables import Variable

    local = Settings(**overrides)
    values: dict[str, Any] = dict(Variable.get(SETTINGS_VARIABLE, default=None) or {})
    values |= {field: getattr(local, field) for field in local.model_fields_set}
    for field, block in SECRET_BLOCKS.items():
        if field not in local.model_fields_set:
            try:
                values[field] = Secret.load(block).get()  # type: ignore[union-attr]  # Prefect types its sync-or-async functions as returning either
            except ValueError:  # no such block: that provider's key is not shared
                continue
    if local.uses_embedded_postgres:  # neither DATABASE_URL/DB_* nor DATABASE_BLOCK on this machine
        try:
            values["database_url"] = block_database_url(DATABASE_BLOCK)
        except ValueError:  # not published: this machine's own (embedded) database
            pass
    return with_database_block(Settings(**values))
