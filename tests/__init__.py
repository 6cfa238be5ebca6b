"""Test package: shared helpers import as `tests.fakeapi` (from tests and from `python -m bench...`)."""
