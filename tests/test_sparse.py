"""BM25 keyword retrieval and hybrid search: bm25s's scores against the formula computed here, RRF on
lists small enough to fuse by hand, the keyword index kept in step with Chroma (add, delete, dedup,
rollback, pending chunks, another writer, a missing or damaged file, reopening) in embedded and server
mode, and an exact identifier that cosine misses but BM25 and hybrid find first."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from core.errors import InputError, VectorLabError
from core.retrieval import sparse as sparse_module
from core.retrieval.documents import parse_text
from core.retrieval.fusion import RRF_K, reciprocal_rank_fusion
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.sparse import BM25_B, BM25_K1, SparseIndex, terms
from core.tolerance import EPS64, check_close
from tests.fixtures_search import (  # noqa: F401  (fixtures)
    chroma_client,
    chroma_server,
    collection_name,
    fresh_index,
    minilm,
)
from tests.test_pages_search import data_dir  # noqa: F401  (fixture)
from tests.test_search import _FailingEmbedder

# A small set of product documents: two near-identical error codes (E4107, E4170) in different files.
DOCS = {
    "troubleshooting.md": "Troubleshooting. When the sync worker fails it prints an error code such as "
    "E1001 or E2040 and exits. Most codes mean the network dropped; retry after a minute. The messages "
    "are written to the worker log.",
    "release_notes.md": "Release 2.3. The dashboard gains a dark theme, exports to CSV run twice as fast, "
    "and the installer no longer asks for administrator rights. A full lease table is now reported as "
    "E4107 instead of a generic failure. Translations into Polish and Korean were added, and the help "
    "pages were rewritten.",
    "limits.md": "Upload limits. E4170 means the upload was larger than the size limit of the server; "
    "split the file or raise max_upload_mb. E4017 means the upload had no file name.",
    "config.md": "Configuration. Settings are read from vectorlab.toml, then from environment variables. "
    "An environment variable takes precedence over the file, and a command-line flag takes precedence "
    "over both.",
    "auth.md": "Signing in. Tokens expire after one hour. A request with an expired token is refused with "
    "status 401 and the client must sign in again.",
    "backup.md": "Backups. The nightly job copies the data folder to cold storage and keeps thirty days "
    "of snapshots. Restore a snapshot with the restore command.",
    "network.md": "Network failures. Timeouts and refused connections are retried three times with "
    "exponential backoff before the worker reports a failure code.",
}


def documents(*names: str):
    return [parse_text(DOCS[n], name=n) for n in names or DOCS]


def reference_bm25(corpus: list[list[str]], query: list[str]) -> np.ndarray:
    """BM25 as bm25s's "lucene" method defines it, computed here in float64 from the token lists:
    idf(t) = ln(1 + (N − df + 0.5)/(df + 0.5)), weight(t, d) = idf · tf / (tf + k1·(1 − b + b·|d|/avg|d|)),
    score(q, d) = Σ over the query's terms (repeats included) of weight(t, d)."""
    n = len(corpus)
    avg = sum(len(d) for d in corpus) / n
    df = Counter(t for d in corpus for t in set(d))
    scores = np.zeros(n)
    for i, doc in enumerate(corpus):
        tf = Counter(doc)
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                scores[i] += idf * tf[t] / (tf[t] + BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / avg))
    return scores


# --- the formula and the fusion, no Chroma --------------------------------------------------------


def test_terms_keep_identifiers_and_drop_stopwords():
    assert terms("The E4107 error: lease_slots IS full; a b 2.3") == ["e4107", "error", "lease_slots", "full"]


@pytest.mark.parametrize(
    "query", ["E4107", "takes precedence", "upload upload limit", "worker network failure code", "zebra"]
)
def test_bm25_scores_equal_the_formula_computed_independently(query):
    texts = list(DOCS.values())
    index = SparseIndex.from_texts(list(DOCS), texts)
    corpus = [terms(t) for t in texts]
    query_terms = terms(query)
    ours = reference_bm25(corpus, query_terms)
    # Each term's weight is rounded to float32 a few times (idf, weight, the running sum): about
    # 3 roundings per query term.
    check = check_close(index.scores(query), ours, reduction_length=3 * max(1, len(query_terms)))
    assert check.passed, check
    if query == "zebra":
        assert not ours.any() and index.top(query, 5) == []
    else:
        assert ours.max() > 0
        assert [cid for cid, _ in index.top(query, 3)][0] == list(DOCS)[int(np.argmax(ours))]


def test_explanation_sums_per_term_weights_to_the_library_score():
    index = SparseIndex.from_texts(list(DOCS), list(DOCS.values()))
    query = "worker failure failure code E4107"
    corpus = [terms(t) for t in DOCS.values()]
    for row, cid in enumerate(DOCS):
        why = index.explain(query, cid)
        assert [t.term for t in why.query_terms] == ["worker", "failure", "code", "e4107"]
        assert [t.query_count for t in why.query_terms] == [1, 2, 1, 1]
        check = check_close(why.term_sum, why.library_score, reduction_length=3 * 5)
        assert check.passed, (cid, check)
        for t in why.query_terms:  # each weight is the formula's, and only terms of the chunk weigh
            expected = reference_bm25(corpus, [t.term])[row]
            assert check_close(t.weight, expected, reduction_length=3).passed
            assert t.matches == (t.term in corpus[row])
            df = sum(t.term in doc for doc in corpus)
            idf = math.log(1 + (len(corpus) - df + 0.5) / (df + 0.5)) if df else 0.0
            assert check_close(t.idf, idf, eps=EPS64).passed
        assert set(why.chunk_weights) == set(corpus[row])
        assert list(why.chunk_weights.values()) == sorted(why.chunk_weights.values(), reverse=True)


def test_rrf_order_is_the_hand_computed_fusion():
    fused = reciprocal_rank_fusion([["x", "y", "z"], ["z", "x", "w"]], k=60)
    # x: 1/61 + 1/62, z: 1/63 + 1/61, y: 1/62, w: 1/63
    assert [f.id for f in fused] == ["x", "z", "y", "w"]
    assert [f.ranks for f in fused] == [(1, 2), (3, 1), (2, None), (None, 3)]
    assert fused[0].score == 1 / 61 + 1 / 62 and fused[1].score == 1 / 63 + 1 / 61
    assert RRF_K == 60
    # with k = 0 the head dominates: one first place (1) beats two second places (1/2 + 1/2 = 1 ties,
    # broken by the order the items were first met)
    assert [f.id for f in reciprocal_rank_fusion([["a", "b"], ["c", "b"]], k=0)] == ["a", "b", "c"]
    with pytest.raises(
        ValueError, match=re.escape("RRF k must be 0 or more, got -1; the usual value is 60.")
    ):
        reciprocal_rank_fusion([["a"]], k=-1)


def test_a_saved_index_loads_with_the_same_scores_and_a_half_write_leaves_the_old_file(tmp_path, monkeypatch):
    index = SparseIndex.from_texts(list(DOCS), list(DOCS.values()), collection_id="c1")
    path = tmp_path / "docs.bm25.npz"
    index.save(path)
    loaded = SparseIndex.load(path)
    assert loaded.ids == index.ids and loaded.collection_id == "c1"
    np.testing.assert_array_equal(loaded.scores("lease table E4107"), index.scores("lease table E4107"))
    before = path.read_bytes()

    def crash(file, **arrays):  # the disk fills up half-way through the new file
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(sparse_module.np, "savez", crash)
    with pytest.raises(OSError, match="No space left on device"):
        index.without_ids(["auth.md"]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["docs.bm25.npz"]  # no temporary file left over
    path.write_bytes(b"PK\x03\x04 damaged")
    assert SparseIndex.load(path) is None


# --- kept in step with Chroma (embedded and server) -----------------------------------------------


def keyword_hits(index: DocumentIndex, query: str) -> list[tuple[str, float]]:
    return [(h.doc_name, round(h.bm25, 5)) for h in index.search(query, k=10, mode="sparse").hits]


def test_deleting_a_document_removes_its_terms_and_reopening_gives_the_same_results(fresh_index, minilm):  # noqa: F811
    index = fresh_index
    index.add_documents(documents())
    assert index.sparse_path.exists()
    assert keyword_hits(index, "E4107")[0][0] == "release_notes.md"
    target = next(d for d in index.list_documents() if d.name == "release_notes.md")
    index.delete_document(target.content_hash)
    with pytest.raises(
        InputError, match=re.escape(f"No chunk in '{index.name}' contains any word of 'E4107'")
    ):
        index.search("E4107", mode="sparse")
    before = keyword_hits(index, "upload limit lease")
    sparse_module._LOADED.clear()  # a new process: nothing cached, read from the file
    reopened = DocumentIndex(index.client, minilm, IndexSettings(collection=index.name))
    result = reopened.search("upload limit lease", k=10, mode="sparse")
    assert result.notes == ()  # the saved file was up to date
    assert [(h.doc_name, round(h.bm25, 5)) for h in result.hits] == before
    assert len(reopened.sync_sparse()[0]) == reopened.count()


def test_duplicates_rollback_and_pending_chunks_never_reach_the_keyword_index(fresh_index, minilm):  # noqa: F811
    index = fresh_index
    index.add_documents(documents("config.md", "auth.md"))
    index.add_documents(documents("config.md"))  # the same text again: skipped
    keywords, note = index.sync_sparse()
    assert note is None and len(keywords) == index.count()
    failing = DocumentIndex(
        index.client, _FailingEmbedder(minilm), IndexSettings(collection=index.name, batch_size=1)
    )
    with pytest.raises(VectorLabError, match=re.escape("Indexing stopped (encoder crashed")):
        failing.add_documents(documents("limits.md", "backup.md"))
    assert (index.sync_sparse()[0].fingerprint, index.sync_sparse()[1]) == (keywords.fingerprint, None)
    # chunks of an upload still being stored (complete: False) stay out of the keyword index
    index.collection.add(
        ids=["pending-00000"],
        documents=["E4170 half stored"],
        metadatas=[{"complete": False, "doc_hash": "pending", "doc_name": "p.txt"}],
    )
    assert (index.sync_sparse()[0].fingerprint, index.sync_sparse()[1]) == (keywords.fingerprint, None)
    with pytest.raises(InputError, match=re.escape("contains any word of 'E4170'")):
        index.search("E4170", mode="sparse")


def test_a_collection_changed_elsewhere_is_rebuilt_and_said(fresh_index, minilm, tmp_path):  # noqa: F811
    index = fresh_index
    index.add_documents(documents("config.md", "auth.md"))
    # Another process writes into the same collection and keeps its keyword index somewhere else.
    settings = IndexSettings(collection=index.name)
    other = DocumentIndex(index.client, minilm, settings, sparse_dir=tmp_path / "other")
    before = index.count()
    other.add_documents(documents("release_notes.md"))
    other.delete_document(next(d.content_hash for d in other.list_documents() if d.name == "auth.md"))
    added, removed = index.count() - before + 1, 1  # auth.md is one chunk
    result = index.search("E4107", k=3, mode="sparse")
    assert result.notes == (
        f"The keyword (BM25) index of '{index.name}' was out of date ({added} chunks added and {removed} "
        "removed elsewhere); it was rebuilt from the collection's chunks.",
    )
    assert [d.n_chunks for d in index.list_documents() if d.name == "config.md"] == [1]
    assert result.hits[0].doc_name == "release_notes.md"
    assert index.search("E4107", k=3, mode="sparse").notes == ()  # told once: now it is saved
    index.sparse_path.unlink()
    sparse_module._LOADED.clear()
    assert index.search("E4107", k=3, mode="hybrid").notes == (
        f"The keyword (BM25) index of '{index.name}' had not been built yet; it was rebuilt from the "
        "collection's chunks.",
    )
    index.sparse_path.write_bytes(b"not an index")
    assert "could not be read" in index.search("E4107", k=3).notes[0]
    index.delete_collection(index.name)
    assert not index.sparse_path.exists()


# --- hybrid search on a realistic corpus ----------------------------------------------------------


@pytest.fixture
def docs_index(fresh_index):  # noqa: F811
    fresh_index.add_documents(documents())
    return fresh_index


@pytest.mark.parametrize("query", ["E4107", "how to fix E4107"])
def test_an_exact_identifier_cosine_misses_is_found_first_by_bm25_and_hybrid(docs_index, query):
    dense = docs_index.search(query, k=3, mode="dense")
    target = next(h for h in dense.hits if h.doc_name == "release_notes.md")
    assert dense.hits[0].doc_name == "limits.md"  # E4170 / E4017 look the same to MiniLM
    assert target.dense_rank > 1
    for mode in ("sparse", "hybrid"):
        hits = docs_index.search(query, k=3, mode=mode).hits
        assert hits[0].doc_name == "release_notes.md", mode
        assert hits[0].sparse_rank == 1 and hits[0].dense_rank == target.dense_rank


def test_hits_carry_both_scores_and_ranks_and_hybrid_is_their_rrf(docs_index):
    query = "which setting takes precedence over the environment"
    dense = docs_index.search(query, k=7, mode="dense")
    sparse = docs_index.search(query, k=7, mode="sparse")
    hybrid = docs_index.search(query, k=7, mode="hybrid")
    assert dense.mode == "dense" and hybrid.rrf_k == RRF_K and dense.candidates == 50
    fused = reciprocal_rank_fusion([[h.id for h in dense.hits], [h.id for h in sparse.hits]])
    assert [h.id for h in hybrid.hits] == [f.id for f in fused][:7]
    assert [h.rank for h in hybrid.hits] == list(range(1, len(hybrid.hits) + 1))
    by_id = {h.id: h for h in dense.hits}
    scores = docs_index.sync_sparse()[0].scores(query)
    rows = {cid: i for i, cid in enumerate(docs_index.sync_sparse()[0].ids)}
    for h in hybrid.hits:
        assert h.dense_rank == by_id[h.id].rank
        assert (h.cosine, h.dot, h.l2) == (by_id[h.id].cosine, by_id[h.id].dot, by_id[h.id].l2)
        assert h.bm25 == float(scores[rows[h.id]])
        assert h.rrf == sum(1 / (RRF_K + r) for r in (h.dense_rank, h.sparse_rank) if r is not None)
    assert [h.sparse_rank for h in sparse.hits] == list(range(1, len(sparse.hits) + 1))
    assert all(h.bm25 > 0 for h in sparse.hits)
    assert dense.hits[0].doc_name == sparse.hits[0].doc_name == "config.md"
    assert {h.id for h in hybrid.hits} == {h.id for h in dense.hits}  # 7 chunks: all of them


def test_a_search_mode_that_does_not_exist_is_refused(docs_index):
    with pytest.raises(
        InputError, match=re.escape("Search mode must be one of dense, sparse, hybrid, got 'bm25'.")
    ):
        docs_index.search("E4107", mode="bm25")


# --- the page -------------------------------------------------------------------------------------

SEARCH_PAGE = "pages/7_search.py"
BOTH_CHECKS = ("Σ per-term vs bm25s's score", "Σ q_i·c_i / (‖q‖‖c‖) vs Chroma's cosine")
FUSION_CHECK = "Σ 1/(k + rank) vs the fused score"


def test_search_page_picks_a_mode_and_shows_both_vectors_with_their_checks(tiny_gpt2_dir, data_dir):  # noqa: F811
    from tests.test_pages import app_test, assert_clean, check_shown_passed
    from tests.test_pages_search import hit_headers, search, upload_and_index

    at = app_test(SEARCH_PAGE, str(tiny_gpt2_dir)).run()
    assert at.radio(key="search_mode").value == "hybrid"  # the page default
    files = [(name.replace(".md", ".txt"), text.encode(), "text/plain") for name, text in DOCS.items()]
    upload_and_index(at, files)
    assert_clean(at)

    at.radio(key="search_mode").set_value("hybrid").run()
    search(at, "E4107", k=3)
    assert_clean(at)
    headers = hit_headers(at)
    assert headers[0].startswith("**[1] release\\_notes\\.txt**")
    assert "ranks: cosine #2, BM25 #1 · RRF **0.0325**" in headers[0]  # 1/62 + 1/61
    assert "ranks: cosine #1, BM25 – · RRF **0.0164**" in headers[1]  # limits.txt: 1/61
    for label in (*BOTH_CHECKS, FUSION_CHECK):
        assert check_shown_passed(at, label), label
    assert {m.label: m.value for m in at.metric}[FUSION_CHECK] == f"{1 / 62 + 1 / 61:.5f}"
    chips = [h.value for h in at.html if "e4107" in h.value]
    assert chips and all("#fde68a" in h for h in chips)  # the shared term is highlighted in both vectors
    contributions = next(d.value for d in at.dataframe if "contribution" in d.value.columns)
    assert contributions["term"].tolist() == ["e4107"] and contributions["contribution"].iloc[0] > 0
    assert len(at.get("vega_lite_chart")) == 2  # the 384-number strips and the chunk map

    at.selectbox(key="search_vector_hit").set_value(2).run()  # limits.txt shares no word with "E4107"
    assert_clean(at)
    contributions = next(d.value for d in at.dataframe if "contribution" in d.value.columns)
    assert contributions["contribution"].tolist() == [0.0]
    assert all(check_shown_passed(at, label) for label in BOTH_CHECKS)
    assert any("BM25 0.000: not among the top 50 of this list" in m.value for m in at.markdown)

    at.radio(key="search_mode").set_value("dense").run()
    assert_clean(at)
    assert hit_headers(at)[0].startswith("**[1] limits\\.txt**")
    assert FUSION_CHECK not in {m.label for m in at.metric}

    at.radio(key="search_mode").set_value("sparse").run()
    search(at, "zebra", k=3)
    assert [e.value for e in at.error] == [
        "No chunk in 'documents' contains any word of 'zebra' (stopwords such as 'the' and one-letter "
        "words are ignored); try dense or hybrid search."
    ]


def test_bm25_finds_a_chunk_by_its_section_title(fresh_index):  # noqa: F811
    """The heading path is indexed with the chunk's text, as it is embedded with it for dense search:
    a word only the section title holds finds every chunk of that section by keyword."""
    from core.retrieval.documents import parse_file

    body = " ".join(
        f"Rule {i}: a member may mount removable device number {i} from the desk {i * 7} without asking."
        for i in range(40)
    )
    manual = f"# Permissions\n\n## plugdev\n\n{body}\n\n## other\n\nNothing here.\n"
    fresh_index.add_documents([parse_file("manual.md", manual.encode())])
    section = [c for c in fresh_index.chunk_vectors().texts if "desk" in c]
    headless = [c for c in section if "plugdev" not in c]
    assert len(section) >= 2 and headless  # the section spans chunks, some without its title
    hits = fresh_index.search("plugdev", k=len(section) + 1, mode="sparse").hits
    assert {h.text for h in hits} == set(section)
    assert all(h.heading_path == ("Permissions", "plugdev") for h in hits)
