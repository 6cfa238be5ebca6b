"""The entrypoint `prefect.yaml` deploys (`flows/ingest.py:ingest`); the flows live in the package."""

from gent_disagreement_rag.orchestration.flows import episode_pipeline, ingest

__all__ = ["episode_pipeline", "ingest"]
