"""Ingest: which episodes to process (plan), what each stage's output depends on (keys), the stages as
plain functions (stages), and the one episode sequence (sequence), all on one RunContext. No Prefect
here: the orchestration layer runs the same sequence with each stage as a task."""
