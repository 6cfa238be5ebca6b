-- Each model's HNSW index is over `embedding::vector(D)` or, past vector's 2,000-dimension index limit,
-- `embedding::halfvec(D)` (storage/vector_index.py says why): models up to 4,000 dimensions can be stored and searched.
ALTER TABLE embedding_models ADD COLUMN index_kind text NOT NULL DEFAULT 'vector'
    CHECK (index_kind IN ('vector', 'halfvec'));
ALTER TABLE embedding_models DROP CONSTRAINT embedding_models_dimensions_check;
ALTER TABLE embedding_models ADD CONSTRAINT embedding_models_dimensions_check CHECK (dimensions BETWEEN 1 AND 4000);
