"""Storage: the Postgres the knowledge base lives in (embedded or the user's), its pool and schema
migrations, and the tables: episodes, segments with their embeddings, the cost ledger."""
