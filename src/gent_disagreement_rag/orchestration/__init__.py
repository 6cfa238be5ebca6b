"""Orchestration: the only layer that imports Prefect. The flows (ingest -> episode_pipeline -> stage
tasks), the environment Prefect processes run with, and the local server, pool and worker."""
