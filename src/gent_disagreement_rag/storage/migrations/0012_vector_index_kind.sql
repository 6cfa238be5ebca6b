-- Each model's HNSW index is over `embedding::vector(D)` or, past 1,024 dimensions, `embedding::halfvec(D)`
-- (storage/vector_index.py says why). Models registered before keep their full-precision index until
-- `gdr db reindex` rebuilds it; halfvec indexes up to 4,000 dimensions, where vector's stop at 2,000.
ALTER TABLE embedding_models ADD COLUMN index_kind text NOT NULL DEFAULT 'vector'
    CHECK (index_kind IN ('vector', 'halfvec'));
ALTER TABLE embedding_models DROP CONSTRAINT embedding_models_dimensions_check;
ALTER TABLE embedding_models ADD CONSTRAINT embedding_models_dimensions_check CHECK (dimensions BETWEEN 1 AND 4000);
