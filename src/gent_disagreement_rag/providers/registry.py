"""The one registry of providers: which embedder serves a model id, which transcriber a setting names, what
each costs, and who reads a saved raw response.

Every command asks it (`provider_registry(settings)`, or the shortcuts `embedder_for` and `transcriber_for`).
It is built on each call from the built-in providers plus the modules PROVIDER_PLUGINS names, each with a
`register(registry)` function (simonw/llm's plugin hook, by setting instead of entry point): a test registers a
fake there, and because the setting travels in the environment the fake reaches every process a run starts
(a `gdr` subprocess, a Prefect worker, a Dask worker). Nothing is kept at module level: building it imports no
model and loads nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError
from ..settings import Settings

if TYPE_CHECKING:
    from ..transcript import Transcript
    from .embedders import Embedder
    from .transcribers import Transcriber


@dataclass(frozen=True, slots=True)
class ModelId:
    """An embedding model as stored beside its vectors: 'provider/model@dimensions'."""

    provider: str
    model: str
    dimensions: int

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}@{self.dimensions}"

    @classmethod
    def parse(cls, text: str) -> ModelId:
        provider, sep, rest = text.partition("/")
        model, at, dimensions = rest.rpartition("@")
        if not (sep and at and provider and model and dimensions.isdigit()):
            raise ValueError(f"not a model id (provider/model@dimensions): {text!r}")
        return cls(provider, model, int(dimensions))


class EmbedderProvider(Protocol):
    """How one provider's embedders are made: for ingest from the settings, and for queries from a stored model."""

    name: str

    def settings_model(self, settings: Settings) -> ModelId:
        """The model the settings' embedder would produce, without building it (no model load, no key check)."""
        ...

    def embedder(self, settings: Settings) -> Embedder:
        """The embedder of an ingest run, as the settings choose it (a ConfigError naming the setting otherwise)."""
        ...

    def query_embedder(self, model: ModelId, settings: Settings) -> Embedder:
        """An embedder of queries comparable with `model`'s stored vectors (a ConfigError saying what is missing)."""
        ...

    def cost(self, settings: Settings, tokens: int) -> float:
        """USD for embedding `tokens` at the configured list price."""
        ...


class TranscriberProvider(Protocol):
    """How one provider's transcriber is made, how its saved raw responses are read, and what it costs."""

    name: str
    # Whether the limit every machine shares (DEEPGRAM_MAX_CONCURRENCY) applies to its requests.
    fleet_limited: bool

    def transcriber(self, settings: Settings, at_once: int) -> Transcriber:
        """The transcriber for a run that transcribes `at_once` episodes at the same time."""
        ...

    def reads(self, raw: Mapping[str, Any]) -> bool:
        """Whether `raw` is a response this provider saved."""
        ...

    def parse_raw(self, raw: dict[str, Any]) -> Transcript:
        """A saved raw response as a Transcript, by today's rules."""
        ...

    def cost(self, settings: Settings, audio_seconds: float) -> float:
        """USD for transcribing `audio_seconds` at the configured list price."""
        ...


class Registry:
    """Providers by name, for one set of settings. `add_*` replaces a provider of the same name (a plugin may
    override a built-in)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._embedders: dict[str, EmbedderProvider] = {}
        self._transcribers: dict[str, TranscriberProvider] = {}

    def add_embedder(self, provider: EmbedderProvider) -> None:
        self._embedders[provider.name] = provider

    def add_transcriber(self, provider: TranscriberProvider) -> None:
        self._transcribers[provider.name] = provider

    @property
    def embedder_names(self) -> tuple[str, ...]:
        return tuple(self._embedders)

    @property
    def transcriber_names(self) -> tuple[str, ...]:
        return tuple(self._transcribers)

    # Embedders

    def embedder_provider(self, name: str) -> EmbedderProvider:
        try:
            return self._embedders[name]
        except KeyError:
            raise ConfigError(f"EMBEDDER={name!r} is not a known embedder (known: {', '.join(self._embedders)}; "
                              "PROVIDER_PLUGINS adds more)") from None

    def settings_model(self) -> ModelId:
        """The model the settings' embedder produces: what search prefers and what ingest wants stored."""
        return self.embedder_provider(self.settings.resolved_embedder).settings_model(self.settings)

    def embedder(self) -> Embedder:
        """The embedder the settings choose (EMBEDDER=auto: OpenAI when its key is set)."""
        return self.embedder_provider(self.settings.resolved_embedder).embedder(self.settings)

    def embedder_for(self, model: ModelId | str) -> Embedder:
        """An embedder whose vectors compare with those `model` made (a query's), or a ConfigError saying why not."""
        wanted = model if isinstance(model, ModelId) else ModelId.parse(model)
        provider = self._embedders.get(wanted.provider)
        if provider is None:
            raise ConfigError(f"the stored vectors were made with {wanted}, which no registered embedder serves")
        return provider.query_embedder(wanted, self.settings)

    # Transcribers

    def transcriber_provider(self, name: str) -> TranscriberProvider:
        try:
            return self._transcribers[name]
        except KeyError:
            raise ConfigError(f"TRANSCRIBER={name!r} is not a known transcriber (known: "
                              f"{', '.join(self._transcribers)}; PROVIDER_PLUGINS adds more)") from None

    def transcriber(self, at_once: int = 1) -> Transcriber:
        """The transcriber the settings choose (TRANSCRIBER=auto: Deepgram when its key is set), for a run that
        transcribes `at_once` episodes at the same time."""
        return self.transcriber_provider(self.settings.resolved_transcriber).transcriber(self.settings, at_once)

    def parse_raw(self, raw: dict[str, Any]) -> Transcript:
        """A saved raw response of any registered transcriber as a Transcript, by today's rules."""
        for provider in reversed(self._transcribers.values()):  # a plugin's reader is asked before the built-ins
            if provider.reads(raw):
                return provider.parse_raw(raw)
        raise ValueError("the raw response is not one any registered transcriber saved")

    # Prices

    def cost(self, provider: str, *, audio_seconds: float = 0.0, tokens: int = 0) -> float:
        """USD for a call to `provider` at the configured list prices (0 for a provider with no price)."""
        total = 0.0
        if audio_seconds and provider in self._transcribers:
            total += self._transcribers[provider].cost(self.settings, audio_seconds)
        if tokens and provider in self._embedders:
            total += self._embedders[provider].cost(self.settings, tokens)
        return total


def provider_registry(settings: Settings) -> Registry:
    """The built-in providers, then each PROVIDER_PLUGINS module's `register(registry)`."""
    from .embedders import LocalEmbedders, OpenAIEmbedders
    from .transcribers import DeepgramTranscribers, LocalTranscribers

    registry = Registry(settings)
    registry.add_embedder(LocalEmbedders())
    registry.add_embedder(OpenAIEmbedders())
    registry.add_transcriber(DeepgramTranscribers())  # first: a response without a provider field is Deepgram's
    registry.add_transcriber(LocalTranscribers())
    for name in settings.provider_plugins:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"PROVIDER_PLUGINS: cannot import {name!r} ({exc})") from None
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigError(f"PROVIDER_PLUGINS: {name!r} has no register(registry) function")
        register(registry)
    return registry


def embedder_for(model: ModelId | str, settings: Settings) -> Embedder:
    """An embedder of queries comparable with the vectors `model` made."""
    return provider_registry(settings).embedder_for(model)


def transcriber_for(settings: Settings, at_once: int = 1) -> Transcriber:
    """The transcriber the settings choose, for `at_once` episodes transcribed at the same time."""
    return provider_registry(settings).transcriber(at_once)
