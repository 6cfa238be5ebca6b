"""gent-disagreement-rag: a podcast catalogue turned into a searchable, citable knowledge base."""

__version__ = "0.1.0"
