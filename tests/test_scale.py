"""Search at scale: HNSW settings reach Chroma (embedded and server) and are validated; the chunk map
reads a seeded sample once per collection version and always shows the query's hits."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core.errors import SettingsError
from core.retrieval import maps
from core.retrieval.documents import parse_file
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.maps import MapCache, collection_version, embedding_map
from core.retrieval.store import HNSW_LIMITS, HnswSettings, close_client, collection_hnsw, make_client
from tests.fixtures_search import (  # noqa: F401  (fixtures)
    chroma_client,
    chroma_server,
    collection_name,
    corpus_files,
    fresh_index,
    minilm,
)
from tests.test_pages import app_test, assert_clean
from tests.test_pages_search import (  # noqa: F401  (fixture)
    SEARCH,
    corpus,
    data_dir,
    hit_headers,
    search,
    upload_and_index,
)
from ui import search_state

# --- HNSW settings ----------------------------------------------------------------------------------


def test_hnsw_settings_round_trip_through_collection_creation(chroma_client, minilm, collection_name):  # noqa: F811
    wanted = HnswSettings(max_neighbors=24, ef_construction=150, ef_search=120)
    index = DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name, hnsw=wanted))
    reopened = chroma_client.get_collection(collection_name)
    assert collection_hnsw(reopened) == {"max_neighbors": 24, "ef_construction": 150, "ef_search": 120}
    assert reopened.configuration["hnsw"]["space"] == "cosine"
    assert index.hnsw_notes == []


def test_a_new_collection_gets_the_measured_defaults(chroma_client, minilm, collection_name):  # noqa: F811
    DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name))
    defaults = HnswSettings()
    assert collection_hnsw(chroma_client.get_collection(collection_name)) == {
        "max_neighbors": defaults.max_neighbors,
        "ef_construction": defaults.ef_construction,
        "ef_search": defaults.ef_search,
    }


def test_ef_search_changes_later_but_the_graph_settings_do_not(chroma_client, minilm, collection_name):  # noqa: F811
    first = HnswSettings(max_neighbors=16, ef_construction=100, ef_search=100)
    DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name, hnsw=first))
    later = HnswSettings(max_neighbors=48, ef_construction=100, ef_search=300)
    index = DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name, hnsw=later))
    assert collection_hnsw(chroma_client.get_collection(collection_name)) == {
        "max_neighbors": 16,
        "ef_construction": 100,
        "ef_search": 300,
    }
    assert index.hnsw_notes == [
        "max_neighbors stays 16 (asked for 48): it is fixed when the collection is created; start a new "
        "collection to use another value."
    ]
    # Opening without settings keeps what the collection has.
    DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name))
    assert collection_hnsw(chroma_client.get_collection(collection_name))["ef_search"] == 300


@pytest.mark.parametrize("name", list(HNSW_LIMITS))
def test_bad_hnsw_values_say_how_to_fix_them(name):
    low, high = HNSW_LIMITS[name]
    default = getattr(HnswSettings, name)
    with pytest.raises(
        SettingsError,
        match=re.escape(
            f"HNSW {name} must be between {low} and {high}, got {low - 1}; the default is {default}."
        ),
    ):
        HnswSettings(**{name: low - 1})
    with pytest.raises(SettingsError, match=re.escape(f"got {high + 1}; the default is {default}.")):
        HnswSettings(**{name: high + 1})
    with pytest.raises(
        SettingsError, match=re.escape(f"HNSW {name} must be a whole number, got 1.5; try {low}-{high}.")
    ):
        HnswSettings(**{name: 1.5})


# --- the chunk map ----------------------------------------------------------------------------------


@pytest.fixture
def filled_index(fresh_index):  # noqa: F811
    report = fresh_index.add_files(corpus_files())
    assert not report.errors
    return fresh_index


class CountingReads:
    """Counts the bulk reads of chunk vectors the map makes."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = maps.read_sample

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(maps, "read_sample", counted)


def test_a_second_render_reads_no_vectors_until_the_collection_changes(filled_index, monkeypatch):
    reads = CountingReads(monkeypatch)
    cache = MapCache()
    first = embedding_map(filled_index, "How do bees communicate?", max_points=10, cache=cache)
    again = embedding_map(filled_index, "What do cells do?", max_points=10, cache=cache)
    assert reads.calls == 1
    assert again.ids == first.ids
    np.testing.assert_array_equal(again.coords, first.coords)

    before = collection_version(filled_index.collection)
    filled_index.add_documents([parse_file("extra.txt", b"Otters hold hands while they sleep in kelp.")])
    assert collection_version(filled_index.collection) != before
    grown = embedding_map(filled_index, max_points=10, cache=cache)
    assert reads.calls == 2 and grown.n_total == first.n_total + 1

    doc = next(d for d in filled_index.list_documents() if d.name == "extra.txt")
    filled_index.delete_document(doc.content_hash)
    embedding_map(filled_index, max_points=10, cache=cache)
    assert reads.calls == 3


def test_a_delete_and_add_of_the_same_size_still_changes_the_version(filled_index):
    filled_index.add_documents([parse_file("a.txt", b"Otters hold hands while they sleep in kelp.")])
    before = collection_version(filled_index.collection)
    doc = next(d for d in filled_index.list_documents() if d.name == "a.txt")
    filled_index.delete_document(doc.content_hash)
    filled_index.add_documents([parse_file("b.txt", b"Crows remember the faces of people they met.")])
    after = collection_version(filled_index.collection)
    assert after.count == before.count and after != before


def test_the_sample_is_seeded_and_always_holds_the_hits(filled_index):
    n = filled_index.count()
    hits = filled_index.search("How do bees communicate?", k=4).hits
    hit_ids = [h.id for h in hits]
    a = embedding_map(filled_index, max_points=6, always_include=hit_ids, seed=3)
    b = embedding_map(filled_index, max_points=6, always_include=hit_ids, seed=3)
    assert a.ids == b.ids and len(a.ids) == 6 and set(hit_ids) <= set(a.ids)
    assert a.sampled and a.n_total == n
    assert a.describe() == f"showing 6 of {n:,} chunks, sampled"
    other = embedding_map(filled_index, max_points=6, seed=4)
    plain = embedding_map(filled_index, max_points=6, seed=3)
    assert other.ids != plain.ids  # another seed draws another sample
    # Shown coordinates are the PCA of the shown vectors, read from the store.
    stored = filled_index.collection.get(ids=a.ids, include=["embeddings"])
    by_id = dict(zip(stored["ids"], np.asarray(stored["embeddings"], dtype=np.float32), strict=True))
    expected = a.projection.project(np.stack([by_id[i] for i in a.ids]))
    np.testing.assert_array_equal(a.coords, expected)  # the same arithmetic on the same float32 vectors
    whole = embedding_map(filled_index, max_points=n)
    assert not whole.sampled and whole.describe() == f"showing all {n:,} chunks"


# --- the collection settings on the search page -------------------------------------------------------


def test_the_page_creates_a_collection_with_the_chosen_hnsw_settings(tiny_gpt2_dir, data_dir):  # noqa: F811
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    at.number_input(key="search_hnsw_max_neighbors").set_value(24)
    at.number_input(key="search_hnsw_ef_construction").set_value(150)
    at.number_input(key="search_hnsw_ef_search").set_value(90)
    at.text_input(key="search_new_collection").input("tuned-notes").run()
    assert_clean(at)
    assert at.session_state[search_state.COLLECTION] == "tuned-notes"
    client = make_client(data_dir / "chroma")
    try:
        assert collection_hnsw(client.get_collection("tuned-notes")) == {
            "max_neighbors": 24,
            "ef_construction": 150,
            "ef_search": 90,
        }
    finally:
        close_client(client)
    table = next(df.value for df in at.dataframe if "changeable" in df.value.columns)
    assert dict(zip(table["setting"], table["value"], strict=True)) == {
        "max_neighbors": 24,
        "ef_construction": 150,
        "ef_search": 90,
    }
    assert (
        dict(zip(table["setting"], table["changeable"], strict=True))["max_neighbors"]
        == "no: fixed at creation"
    )

    at.number_input(key="search_hnsw_ef_live").set_value(300)
    at.button(key="search_hnsw_apply").click().run()
    assert_clean(at)
    assert [s.value for s in at.success] == [
        "ef_search of 'tuned-notes' is now 300. Chroma reads it when it opens the collection's index: "
        "searches use it after the app (or the Chroma server) is restarted."
    ]


def test_the_search_page_says_when_the_map_is_sampled_and_reads_it_once(
    tiny_gpt2_dir,
    data_dir,  # noqa: F811
    monkeypatch,
):
    import ui.search.results as results

    monkeypatch.setattr(results, "MAP_POINTS", 5)
    reads = CountingReads(monkeypatch)
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    upload_and_index(at, corpus("honeybees.txt", "glaciers.txt", "jazz.txt"))
    search(at, "How do bees communicate?", k=3)
    assert_clean(at)
    n = len(hit_headers(at))
    assert n == 3
    captions = [c.value for c in at.caption if "chunks, sampled" in c.value]
    assert len(captions) == 1 and re.match(r"\*\*Showing 5 of \d+ chunks, sampled\.\*\*", captions[0])
    after_first = reads.calls
    search(at, "Why do glaciers move?", k=3)
    assert_clean(at)
    assert reads.calls == after_first  # the same collection version: the sample is not read again
