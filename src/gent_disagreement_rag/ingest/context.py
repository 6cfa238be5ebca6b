"""The run context: everything one run needs, built once at its start and passed down to every stage."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from ..providers.embedders import Embedder
from ..providers.lazy import Lazy
from ..providers.registry import Registry, provider_registry
from ..providers.transcribers import Transcriber
from ..settings import Settings
from ..storage.database import Database
from .events import ProgressCallback, ignore_progress

# The context a caller opened for the code it calls (`gdr ingest` for its in-process flow run, the flow for
# the episodes its threads run). Context-local, not process-wide: a thread or process it was not handed to
# (an episode on another machine's worker) sees none and opens its own.
_ACTIVE: ContextVar[RunContext | None] = ContextVar("gdr_run_context", default=None)


def _load_speaker_model(settings: Settings) -> Any:
    from ..providers.transcribers.speaker_embeddings import load_session  # onnxruntime: only when a stage needs it

    return load_session(settings.models)


class RunContext:
    """Settings, the database pool, the providers (built on first use, once) and the progress callback.

    Slotted, with no __dict__: Prefect records a flow's parameters, and an object it cannot take apart
    is shown as `<RunContext>` instead of having its settings and pool walked into the API.
    """

    __slots__ = ("settings", "db", "progress", "transcriptions_at_once", "fleet", "interrupted", "halted",
                 "providers", "_transcriber", "_embedder", "_speaker_model")

    def __init__(self, settings: Settings, db: Database, progress: ProgressCallback | None = None,
                 transcriptions_at_once: int = 1, *, fleet: bool = False):
        self.settings = settings
        self.db = db
        self.progress = progress or ignore_progress
        self.transcriptions_at_once = transcriptions_at_once
        # Opened from the fleet's shared settings (a deployment run, an episode on a cluster worker): its
        # Deepgram requests also count against the fleet-wide limit every machine shares.
        self.fleet = fleet
        # Set when the person running `gdr ingest` asks it to stop (Ctrl-C, SIGTERM): no new episode starts.
        self.interrupted = threading.Event()
        # Set by an episode that failed in a way every episode would (a bad key, no credit): no new one starts.
        self.halted = threading.Event()
        self.providers: Registry = provider_registry(settings)
        self._transcriber: Lazy[Transcriber] = Lazy(lambda: self.providers.transcriber(transcriptions_at_once))
        self._embedder: Lazy[Embedder] = Lazy(self.providers.embedder)
        # The ECAPA session of the voices stage, loaded by the first episode that needs it, shared by the run's.
        self._speaker_model: Lazy[Any] = Lazy(lambda: _load_speaker_model(settings))

    @classmethod
    def open(cls, settings: Settings | None = None, progress: ProgressCallback | None = None, *,
             fleet: bool = False) -> RunContext:
        """A context on the settings' database (its schema migrated: a run writes), with a pool for
        MAX_PARALLEL_EPISODES workers; close() it."""
        settings = settings or Settings()
        return cls(settings, Database.from_settings(settings, migrate_schema=True), progress, fleet=fleet)

    @staticmethod
    def active() -> RunContext | None:
        """The context a caller activated for this thread of work, if any."""
        return _ACTIVE.get()

    @contextlib.contextmanager
    def activated(self) -> Iterator[RunContext]:
        """This context as the active one for what runs inside (threads started from it inherit it)."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def with_progress(self, progress: ProgressCallback) -> RunContext:
        """The same run (settings, pool, providers) reporting to `progress` instead."""
        other = RunContext(self.settings, self.db, progress, self.transcriptions_at_once, fleet=self.fleet)
        other.interrupted, other.halted = self.interrupted, self.halted
        other._transcriber, other._embedder, other._speaker_model = self._transcriber, self._embedder, self._speaker_model
        return other

    def transcribing_at_once(self, count: int) -> RunContext:
        """The same run with a transcriber for `count` episodes transcribed at the same time (the local one
        gives each a share of the cores: faster in total than one after the other on all of them). Itself
        when that is already its count; the embedder is shared either way."""
        if count == self.transcriptions_at_once:
            return self
        other = RunContext(self.settings, self.db, self.progress, count, fleet=self.fleet)
        other.interrupted, other.halted = self.interrupted, self.halted
        other._embedder, other._speaker_model = self._embedder, self._speaker_model
        return other

    @property
    def transcriber(self) -> Transcriber:
        return self._transcriber.get()

    @property
    def embedder(self) -> Embedder:
        return self._embedder.get()

    def speaker_model(self) -> Any:
        """The speaker-embedding model (an onnxruntime session), loaded on first use."""
        return self._speaker_model.get()

    def warm_up(self) -> None:
        """Build the providers and load the tokenizer now, while the first transcriptions are in flight,
        instead of in the first episodes to come back, all at once on one GIL (BENCHMARKS.md "Design
        figures"). What cannot be built fails here silently: the stage that needs it raises the error,
        for its episode."""
        from ..text.tokens import encoding

        for load in (self._transcriber.get, self._embedder.get, encoding):
            with contextlib.suppress(Exception):
                load()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
