"""The one settings object, read from the environment and `.env`.

Every knob of the pipeline lives here so that the CLI, the Prefect flows, the workers and the tests
read the same values the same way. Secrets are `SecretStr`: they print as '**********'.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"


class FanOut(StrEnum):
    """Where a run's episodes run."""

    AUTO = "auto"  # deployment runs on the fleet's Dask cluster when it has one; everything else in threads
    THREADS = "threads"  # threads of the run's own process
    CLUSTER = "cluster"  # the Dask cluster at DASK_SCHEDULER_ADDRESS (an error when it does not answer)


class TranscriptPolicy(StrEnum):
    """FEED_TRANSCRIPTS: whether a feed episode with the publisher's own transcript is read from it."""

    PREFER = "prefer"  # read the publisher's transcript when the feed links a usable one; transcribe the rest
    TRANSCRIBE = "transcribe"  # transcribe every episode (the feed's transcripts are ignored)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Storage
    database_url: SecretStr | None = Field(None, description="Postgres URL; unset = embedded Postgres under GDR_HOME")
    database_block: str | None = Field(None, description=
        "Name of a prefect-sqlalchemy SqlAlchemyConnector block; preferred over DATABASE_URL/DB_* when set")
    db_host: str | None = Field(None, description="Legacy: host of an existing Postgres (used when DATABASE_URL is unset)")
    db_port: int = Field(5432, description="Legacy: port, with DB_HOST")
    db_user: str = Field("postgres", description="Legacy: user, with DB_HOST")
    db_password: SecretStr | None = Field(None, description="Legacy: password, with DB_HOST")
    db_name: str = Field("gent_disagreement", description="Legacy: database name, with DB_HOST")
    embedded_tcp_port: int | None = Field(None, ge=1, le=65535, description=
        "Opt-in: the embedded Postgres also listens on 127.0.0.1:PORT, for the read-only role of `gdr db env` "
        "only, with its password; unset = Unix socket only")
    embedded_shared_buffers_mb: int | None = Field(None, ge=16, description=
        "The embedded Postgres's buffer cache in MB (a running server is restarted to apply a change); unset = a "
        "quarter of the RAM, from 128 up to 1024")
    db_pool_timeout: float = Field(30.0, description="Seconds a worker waits for a free pooled connection")

    # Files
    gdr_home: Path = Field(Path(".gdr"), description="State directory: embedded Postgres, caches, models")
    models_dir: Path | None = Field(None, description=
        "Where the models built from the shipped weights on first use are kept (Whisper base, the MiniLM query "
        "model, the speaker model); unset = GDR_HOME/models. Homes or machines may share one.")
    episodes_file: Path = Field(Path("data/episodes.json"), description="The episode catalogue (JSON list)")
    audio_dir: Path = Field(Path("data/audio"), description="Where catalogue file_names are found")
    transcripts_dir: Path = Field(Path("data/transcripts"), description="Exports: raw response, chunks, Markdown, SRT, VTT")
    cache_dir: Path | None = Field(None, description=
        "Prefect result/cache storage; default GDR_HOME/cache. Share it between workers")

    # Orchestration
    result_storage_block: str | None = Field(None, description=
        "Prefect storage block slug for the stage cache (e.g. s3-bucket/gdr-cache); overrides CACHE_DIR")
    max_parallel_episodes: int = Field(3, ge=1, le=64, description=
        "Episodes processed at once (per run, and per worker with `gdr worker start`)")
    fan_out: FanOut = Field(FanOut.AUTO, description=
        "Where a run's episodes run: threads (of the run's own process), cluster (the fleet's Dask workers, every "
        "machine's), or auto = cluster for deployment runs when DASK_SCHEDULER_ADDRESS is known, else threads")
    dask_scheduler_address: str | None = Field(None, description=
        "The fleet's Dask scheduler, e.g. tcp://10.0.0.5:8786; `gdr server start` starts one there (default "
        "tcp://127.0.0.1:8786) and publishes it to the workers")
    worker_name: str | None = Field(None, description="This worker's name in `processed_by` (set by `gdr worker start`)")
    skip_quality_gate: bool = Field(False, description="Embed transcripts even if they fail the coverage check")
    notify_url: SecretStr | None = Field(None, description=
        "Where `gdr server start` sends failed, crashed and late ingest runs: a Slack incoming webhook, or any URL "
        "taking a JSON POST")

    # Providers
    transcriber: str = Field("auto", description=
        "deepgram, local, or one PROVIDER_PLUGINS registers; auto = deepgram when DEEPGRAM_API_KEY is set, else local")
    embedder: str = Field("auto", description=
        "openai, local, or one PROVIDER_PLUGINS registers; auto = openai when OPENAI_API_KEY is set, else local")
    provider_plugins: Annotated[list[str], NoDecode] = Field(default_factory=list, description=
        "Python modules, comma-separated, whose register(registry) adds transcribers or embedders "
        "(providers/registry.py; the tests' fakes are registered this way)")
    deepgram_api_key: SecretStr | None = Field(None, description="Deepgram key")
    deepgram_base_url: str = Field("https://api.deepgram.com", description="Deepgram host (proxy, self-hosted, tests)")
    deepgram_model: str = Field("nova-3", description="Deepgram model")
    deepgram_language: str = Field("en", description="Deepgram language")
    deepgram_max_concurrency: int = Field(10, ge=1, description="Simultaneous Deepgram requests across all episodes")
    deepgram_timeout: float = Field(60.0, gt=0, description="Seconds a Deepgram request may take, plus 0.5 s per second of audio")
    openai_api_key: SecretStr | None = Field(None, description="OpenAI key")
    openai_base_url: str = Field("https://api.openai.com/v1", description="OpenAI base URL (must end in /v1)")
    openai_timeout: float = Field(60.0, gt=0, description="Seconds an OpenAI embeddings request may take")
    embedding_model: str | None = Field(None, description=
        "Embedding model; default text-embedding-3-small (openai) or all-MiniLM-L6-v2 (local)")
    embedding_dimensions: int | None = Field(None, ge=1, description=
        "Vector size (text-embedding-3-* only); default the model's own")
    local_whisper_model: Path | None = Field(None, description=
        "Folder of a CTranslate2 Whisper model; default: the base model shipped in pip packages")
    chunk_max_tokens: int = Field(250, ge=20, le=8000, description="Token budget of one retrieval chunk")
    chunk_max_seconds: float = Field(30.0, ge=5, le=3600, description=
        "Longest stretch of audio one retrieval chunk spans (a citation's precision)")

    # Prices for the cost estimates (USD)
    deepgram_price_per_minute: float = Field(0.0043, description="Deepgram nova-3 pre-recorded, USD per audio minute")
    openai_price_per_million_tokens: float = Field(0.02, description="text-embedding-3-small, USD per 1M tokens")

    # Feeds
    feed_url: Annotated[list[str], NoDecode] = Field(default_factory=list, description=
        "Podcast RSS feed URL(s), JSON list or comma-separated")
    default_speakers_map: dict[str, str] = Field(default_factory=dict, description=
        'Speaker names for feed episodes, JSON like {"0": "Host"}')
    max_audio_bytes: int = Field(1 << 30, ge=1, description="Largest enclosure downloaded from a feed, in bytes (default 1 GiB)")
    feed_audio_dir: Path | None = Field(None, description="Where feed enclosures are downloaded; default GDR_HOME/audio")
    feed_transcripts: TranscriptPolicy = Field(TranscriptPolicy.PREFER, description=
        "prefer = a feed episode whose feed links the publisher's transcript (podcast:transcript: JSON, WebVTT or "
        "SRT) is read from it, not transcribed; transcribe = transcribe every episode")

    @field_validator("feed_url", "provider_plugins", mode="before")
    @classmethod
    def _split_feed_urls(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [u.strip() for u in value.split(",") if u.strip()]
        if isinstance(value, str):
            return json.loads(value)
        return value

    @property
    def uses_embedded_postgres(self) -> bool:
        return self.database_url is None and self.db_host is None and self.database_block is None

    def external_database_url(self) -> str | None:
        """The URL of the server the user named (DATABASE_URL, else legacy DB_*), or None for the embedded one."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        if self.db_host is not None:
            password = self.db_password.get_secret_value() if self.db_password else ""
            auth = quote(self.db_user, safe="") + (":" + quote(password, safe="") if password else "")  # a '/' too
            # The host percent-encoded too: a socket directory (/var/run/postgresql, as psycopg2's host= took it)
            # or an IPv6 address would otherwise be read as the path or the port.
            host = quote(self.db_host, safe="")
            return f"postgresql://{auth}@{host}:{self.db_port}/{quote(self.db_name, safe='')}"
        return None

    @property
    def home(self) -> Path:
        return self.gdr_home.resolve()

    @property
    def models(self) -> Path:
        return self.models_dir.resolve() if self.models_dir is not None else self.home / "models"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def feed_audio_path(self) -> Path:
        return (self.feed_audio_dir or self.home / "audio").resolve()

    @property
    def publisher_files_path(self) -> Path:
        """The publisher's transcripts and chapters as fetched, each named by its content's sha256."""
        return self.home / "publisher"

    @property
    def result_storage_path(self) -> Path:
        return (self.cache_dir or self.home / "cache").resolve()

    @property
    def pool_size(self) -> int:
        """One connection per parallel episode plus two for status reads and the orchestrator."""
        return self.max_parallel_episodes + 2

    @property
    def resolved_transcriber(self) -> str:
        if self.transcriber == "auto":
            return "deepgram" if self.deepgram_api_key else "local"
        return self.transcriber

    @property
    def resolved_embedder(self) -> str:
        if self.embedder == "auto":
            return "openai" if self.openai_api_key else "local"
        return self.embedder

    def require_secret(self, field: str, needed_for: str) -> str:
        """The value of a secret setting, or a ConfigError naming the variable and what needs it."""
        value: SecretStr | None = getattr(self, field)
        if value is None or not value.get_secret_value():
            from .errors import ConfigError

            raise ConfigError(f"{field.upper()} is not set (needed for {needed_for})")
        return value.get_secret_value()

    def scrub(self, text: str) -> str:
        """The text with every secret value replaced by '***' (for anything that leaves the process)."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @cached_property
    def secrets(self) -> list[str]:
        """Secret values, for scrubbing any text that might leave the process."""
        values = [self.deepgram_api_key, self.openai_api_key, self.db_password, self.database_url, self.notify_url]
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


def invalid_settings(exc: ValidationError) -> str:
    """One line naming each bad variable and what is wrong with it, never its value (it may be a secret)."""
    problems = [f"{'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)]
    return f"invalid settings (from the environment or {Settings.model_config['env_file']}): " + "; ".join(problems)


def settings_table() -> str:
    """The README's configuration table, generated from the fields above (`python -m gent_disagreement_rag.settings`)."""
    rows = ["| variable | default | what it does |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default in (None, [], {}) else f"`{default}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
