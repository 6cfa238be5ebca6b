"""Search: hybrid (HNSW vector + full-text) retrieval of stored segments, with speakers, times and links.

`Searcher(settings, db).search(...)` for repeated searches; `search(...)` opens the database for one.
"""

from . import relevance
from .engine import Searcher, choose_model, explain, opened_searcher, search
from .statements import RRF_K
from .types import DEFAULT_MODE, Hit, Mode, SearchError, SearchResults, Segment, deep_link, format_time

__all__ = [
    "DEFAULT_MODE", "RRF_K", "Hit", "Mode", "SearchError", "SearchResults", "Searcher", "Segment", "choose_model", "deep_link",
    "explain", "format_time", "opened_searcher", "relevance", "search",
]
