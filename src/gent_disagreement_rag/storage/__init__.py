"""Storage: the Postgres the knowledge base lives in (embedded or the user's), its pool and schema
migrations, and the tables: episodes, segments with their embeddings, the cost ledger; the read-only role
other applications and the servers read as (reader.py), and the embedded server's TCP rules for it (hba.py)."""
