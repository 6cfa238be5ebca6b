"""Hybrid search: chunks the text side cannot tell apart share one text rank, so their order comes from the
vector side, not from where they sit in the catalogue.

ts_rank_cd scores every chunk that holds one of the query's words once the same (0.1), whichever word it is. Ranked
one after the other by episode id and position, the first episode's one-line mention ("Lovely, next week, the
transistor.") took text rank 1 and the answer in a later episode rank 3, and reciprocal rank fusion turned that
into more than the answer's lead on the vector side: README's second example ranked the answer third."""

from __future__ import annotations

import pytest

from gent_disagreement_rag.providers.embedders.local_minilm import LocalMiniLMEmbedder
from gent_disagreement_rag.search import search
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.sources.catalogue import CatalogueEntry
from gent_disagreement_rag.storage import episodes as episode_store
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.support.builders import segment

CHUNKS = {  # each holds one of the question's words once: a tie on the text side
    "A": ["Lovely. Next week, the transistor."],
    "B": ["This week Daniel has promised me the story of the transistor.",
          "Bell announced the transistor in June 1948.",
          "John Pierce, an engineer at the lab, coined it. It was meant as a short form of transfer resistor."],
}
QUESTION = "who coined the word transistor"


@pytest.fixture
def tied(settings: Settings, db: Database) -> Settings:
    embedder = LocalMiniLMEmbedder()
    episode_store.sync_catalogue(db, [CatalogueEntry(episode_id=e, title=e, file_name=f"{e}.mp3") for e in CHUNKS])
    for episode, texts in CHUNKS.items():
        chunks = [segment(i, "Ann", 10.0 * i, 10.0 * i + 5, text, 20) for i, text in enumerate(texts)]
        segment_store.store_episode(db, episode, chunks, model_id=embedder.model_id, provider=embedder.provider,
                                    model=embedder.model, vectors=embedder.embed(texts).vectors)
    return Settings(**{**settings.model_dump(), "embedder": "local"})


def test_chunks_tied_on_the_text_side_share_a_rank_and_the_vector_side_orders_them(tied: Settings, db: Database) -> None:
    hits = search(QUESTION, k=4, settings=tied, db=db, mode="hybrid")
    assert [h.text_score for h in hits] == pytest.approx([0.1] * 4), [(h.text, h.text_score) for h in hits]
    assert len({h.text_rank for h in hits}) == 1, [(h.text, h.text_rank) for h in hits]
    assert [h.vector_rank for h in hits] == [1, 2, 3, 4], [(h.text, h.vector_rank) for h in hits]
    assert hits[0].text.startswith("John Pierce")
