"""Vector search over a real Chroma, embedded and as a `chroma run` server: retrieval quality on the
test corpus, dedup, progress, list/inspect/delete, bad input that loses nothing, persistence across
processes, and the cosine / dot / L2 comparison."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from chromadb.utils.embedding_functions import known_embedding_functions

from core.errors import InputError, SettingsError, VectorLabError
from core.retrieval.chunking import Chunk, ChunkSettings
from core.retrieval.documents import parse_file, parse_text
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.maps import embedding_map
from core.retrieval.search import Hit, hit_context, rank_under_metrics, rankings_agree
from core.retrieval.store import (
    CHROMA_HOST_ENV,
    CHROMA_PORT_ENV,
    EMBEDDING_FUNCTION_NAME,
    VectorLabEmbeddingFunction,
    close_client,
    make_client,
    store_location,
)
from core.views.search import hit_context_html
from tests.fixtures_search import (  # noqa: F401  (fixtures)
    KILLED_NAME,
    chroma_client,
    chroma_server,
    client_for,
    collection_name,
    corpus_files,
    corpus_index,
    corpus_questions,
    free_port,
    fresh_index,
    kill_during_upload,
    long_text,
    minilm,
)

ROOT = Path(__file__).resolve().parent.parent
RECALL_FLOOR = 0.9


def small_doc(name: str, text: str):
    return parse_file(name, text.encode())


# --- retrieval on the corpus (read-only, indexed once per mode) -----------------------------------


def test_paraphrased_questions_find_their_source_document(corpus_index, record_property):  # noqa: F811
    questions = corpus_questions()
    assert len(questions) >= 20 and len({q["doc"] for q in questions}) >= 20
    found = [
        q["doc"] in {h.doc_name for h in corpus_index.search(q["question"], k=3).hits} for q in questions
    ]
    recall = sum(found) / len(found)
    record_property("recall_at_3", recall)
    print(f"\nrecall@3 = {recall:.3f} over {len(found)} questions ({corpus_index.name})")
    missed = [q["question"] for q, ok in zip(questions, found, strict=True) if not ok]
    assert recall >= RECALL_FLOOR, f"missed: {missed}"


def test_hits_are_ranked_by_cosine_and_point_into_their_documents(corpus_index):  # noqa: F811
    documents = {name: parse_file(name, data) for name, data in corpus_files()}
    result = corpus_index.search("Why do corals turn white?", k=5)
    assert result.query_embedding.shape == (384,)
    hits = result.hits
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].doc_name == "coral_reefs.txt"
    assert [h.cosine for h in hits] == sorted((h.cosine for h in hits), reverse=True)
    for hit in hits:
        assert documents[hit.doc_name].text[hit.char_start : hit.char_end] == hit.text
        assert hit.doc_hash == documents[hit.doc_name].content_hash
        # Unit vectors: dot equals cosine and L2 is a function of it, so all three rank alike.
        assert hit.dot == pytest.approx(hit.cosine, abs=1e-5)
        assert hit.l2 == pytest.approx(np.sqrt(max(0.0, 2 - 2 * hit.cosine)), abs=1e-4)
    assert rankings_agree(hits)


def test_k_larger_than_the_collection_returns_every_chunk(corpus_index):  # noqa: F811
    hits = corpus_index.search("anything at all", k=10_000).hits
    assert len(hits) == corpus_index.count()
    assert len({h.id for h in hits}) == len(hits)


def test_listing_and_inspecting_documents(corpus_index):  # noqa: F811
    files = corpus_files()
    listed = corpus_index.list_documents()
    assert [d.name for d in listed] == sorted(name for name, _ in files)
    assert sum(d.n_chunks for d in listed) == corpus_index.count()
    doc = parse_file(*files[0])
    info = next(d for d in listed if d.name == doc.name)
    assert (info.content_hash, info.kind, info.n_chars) == (doc.content_hash, "txt", doc.n_chars)
    chunks = corpus_index.document_chunks(doc.content_hash)
    assert [c.index for c in chunks] == list(range(info.n_chunks))
    assert all(doc.text[c.char_start : c.char_end] == c.text for c in chunks)
    assert all(c.n_tokens <= corpus_index.settings.chunk.max_tokens for c in chunks)


def test_embedding_map_places_every_chunk_and_the_query(corpus_index, minilm):  # noqa: F811
    vectors = corpus_index.chunk_vectors()
    n = corpus_index.count()
    assert vectors.embeddings.shape == (n, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors.embeddings, axis=1), 1.0, atol=1e-4)
    emap = embedding_map(corpus_index, "How do bees communicate?")
    assert emap.coords.shape == (n, 2) and emap.query_coords.shape == (2,)
    assert emap.doc_names == vectors.doc_names and emap.texts == vectors.texts
    expected = emap.projection.project(minilm.encode(["How do bees communicate?"]))[0]
    np.testing.assert_allclose(emap.query_coords, expected, atol=1e-6)
    assert embedding_map(corpus_index).query_coords is None
    assert emap.n_total == n and len(emap.ids) == n


def test_large_maps_show_a_seeded_sample_that_keeps_the_hits(corpus_index):  # noqa: F811
    hits = corpus_index.search("How do bees communicate?", k=3).hits
    hit_ids = [h.id for h in hits]
    emap = embedding_map(corpus_index, "How do bees communicate?", max_points=10, always_include=hit_ids)
    assert len(emap.ids) == len(emap.texts) == emap.coords.shape[0] == 10
    assert set(hit_ids) <= set(emap.ids) and emap.n_total == corpus_index.count()
    again = embedding_map(corpus_index, max_points=10, always_include=hit_ids)
    assert again.ids == emap.ids  # the same seed draws the same sample


def test_collection_uses_cosine_space_and_our_embedding_function(corpus_index):  # noqa: F811
    config = corpus_index.collection.configuration
    assert config["hnsw"]["space"] == "cosine"
    assert config["embedding_function"].name() == EMBEDDING_FUNCTION_NAME
    ours = {"embedder": "all-MiniLM-L6-v2", "dimension": 384}  # beside the map's version token
    assert corpus_index.collection.metadata.items() >= ours.items()
    names = {c.name: c for c in corpus_index.collections()}
    assert names[corpus_index.name].n_chunks == corpus_index.count()
    assert names[corpus_index.name].embedder == "all-MiniLM-L6-v2"


# --- writing: dedup, progress, delete, collections ------------------------------------------------


def test_the_same_content_is_indexed_once(fresh_index):  # noqa: F811
    index = fresh_index
    doc = small_doc("bees.txt", "Bees dance to show where flowers are.")
    first = index.add_documents([doc])
    assert [d.name for d in first.added] == ["bees.txt"] and first.n_chunks == 1
    assert index.has_document(doc.content_hash)
    count = index.count()
    again = index.add_files([("bees.txt", doc.text.encode())])
    renamed = index.add_files([("copy of bees.md", doc.text.encode())])
    assert again.added == [] and renamed.added == []
    assert [(d.name, d.existing_name) for d in again.duplicates + renamed.duplicates] == [
        ("bees.txt", "bees.txt"),
        ("copy of bees.md", "bees.txt"),
    ]
    twice_in_one = index.add_documents([small_doc("x.txt", "New text."), small_doc("y.txt", "New text.")])
    assert [d.name for d in twice_in_one.added] == ["x.txt"]
    assert [(d.name, d.existing_name) for d in twice_in_one.duplicates] == [("y.txt", "x.txt")]
    assert index.count() == count + 1


def test_progress_reports_chunks_batch_by_batch(chroma_client, minilm, collection_name):  # noqa: F811
    settings = IndexSettings(collection=collection_name, batch_size=4, chunk=ChunkSettings(max_tokens=32))
    index = DocumentIndex(chroma_client, minilm, settings)
    docs = [parse_file(name, data) for name, data in corpus_files()[:3]]
    progress = []
    report = index.add_documents(docs, on_progress=progress.append)
    total = report.n_chunks
    assert total == index.count() > 8
    assert {p.total for p in progress} == {total}
    assert (progress[0].done, progress[-1].done) == (0, total)
    assert [p.done for p in progress] == sorted({p.done for p in progress})
    assert all(b.done - a.done <= 4 for a, b in zip(progress, progress[1:], strict=False))
    assert len(progress) == 1 + -(-total // 4)
    # The time left is the rate so far, in tokens, applied to the tokens still to embed.
    tokens = sum(c.n_tokens for doc in docs for c in index.chunker.chunk(doc))
    assert {p.tokens_total for p in progress} == {tokens}
    assert progress[0].eta_s is None and progress[-1].eta_s == 0.0
    assert progress[-1].describe() == f"Embedded {total} of {total} chunks"
    for p in progress[1:-1]:
        assert 0 < p.tokens_done < tokens and p.elapsed_s > 0
        assert p.eta_s == pytest.approx(p.elapsed_s * (tokens - p.tokens_done) / p.tokens_done, rel=1e-12)
        assert p.describe().startswith(f"Embedded {p.done} of {total} chunks · about ")
    assert [p.elapsed_s for p in progress] == sorted(p.elapsed_s for p in progress)


def test_time_left_reads_in_seconds_minutes_and_hours():
    from core.retrieval.uploads import IndexProgress

    def line(eta_s: float) -> str:  # 100 of 400 tokens took `eta_s / 3` seconds: 3 times that is left
        return IndexProgress(10, 40, 100, 400, elapsed_s=eta_s / 3).describe()

    assert line(40.4) == "Embedded 10 of 40 chunks · about 40 s left"
    assert line(0.2) == "Embedded 10 of 40 chunks · about 1 s left"
    assert line(375) == "Embedded 10 of 40 chunks · about 6 min 15 s left"
    assert line(7500) == "Embedded 10 of 40 chunks · about 2 h 5 min left"
    assert IndexProgress(0, 3812, 0, 9000, 0.0).describe() == (
        "Embedded 0 of 3,812 chunks · estimating the time left…"
    )


def test_deleting_a_document_removes_only_its_chunks(fresh_index):  # noqa: F811
    index = fresh_index
    keep = small_doc("keep.txt", "Glaciers carve valleys as they flow downhill.")
    drop = small_doc("drop.txt", "Octopuses change colour using chromatophores in their skin.")
    index.add_documents([keep, drop])
    assert index.delete_document(drop.content_hash) == 1
    assert not index.has_document(drop.content_hash) and index.has_document(keep.content_hash)
    assert [d.name for d in index.list_documents()] == ["keep.txt"]
    assert {h.doc_name for h in index.search("octopus skin colour", k=5).hits} == {"keep.txt"}
    message = f"No indexed document has hash {drop.content_hash[:12]}...; refresh the list."
    with pytest.raises(InputError, match=re.escape(message)):
        index.delete_document(drop.content_hash)
    with pytest.raises(InputError, match=re.escape(message)):
        index.document_chunks(drop.content_hash)
    assert index.add_documents([drop]).added  # once deleted, it can be uploaded again


def test_collections_can_be_listed_and_deleted(chroma_client, minilm, collection_name):  # noqa: F811
    main = DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name))
    other = DocumentIndex(chroma_client, minilm, IndexSettings(collection=collection_name + "-b"))
    main.add_documents([small_doc("a.txt", "Alpha text.")])
    other.add_documents([small_doc("b.txt", "Beta text.")])
    names = {c.name for c in main.collections()}
    assert {collection_name, collection_name + "-b"} <= names
    main.delete_collection(collection_name + "-b")
    assert collection_name + "-b" not in {c.name for c in main.collections()}
    main.delete_collection(collection_name)  # its own: emptied, still usable
    assert main.count() == 0
    main.add_documents([small_doc("a.txt", "Alpha text.")])
    assert main.count() == 1
    with pytest.raises(InputError, match=re.escape("There is no collection named 'no-such-collection'.")):
        main.delete_collection("no-such-collection")


# --- bad input loses nothing ----------------------------------------------------------------------


def test_queries_that_cannot_run_say_why(fresh_index):  # noqa: F811
    index = fresh_index
    message = f"Nothing is indexed in '{index.name}' yet; upload a document first."
    with pytest.raises(InputError, match=re.escape(message)):
        index.search("a real question")
    with pytest.raises(InputError, match=re.escape(message)):
        embedding_map(index)
    index.add_documents([parse_text("Something is indexed now.")])
    for query in ["", "   \n\t"]:
        with pytest.raises(InputError, match=re.escape("Type a question or phrase to search for.")):
            index.search(query)
    with pytest.raises(InputError, match=re.escape("k must be at least 1, got 0.")):
        index.search("a real question", k=0)


def test_bad_files_in_an_upload_are_reported_and_nothing_indexed_is_lost(fresh_index):  # noqa: F811
    index = fresh_index
    index.add_documents([small_doc("first.txt", "Tides follow the moon.")])
    before = index.list_documents()
    report = index.add_files(
        [
            ("empty.txt", b""),
            ("binary.txt", b"\x00\x01\x02"),
            ("latin1.txt", "caf\xe9".encode("latin-1")),
            ("../../outside.txt", b"Path tricks."),
            ("broken.pdf", b"%PDF-1.4 truncated"),
            ("big.txt", b"a" * (10 * 1024 * 1024 + 1)),
            ("good.md", b"# Good\n\nSundials read the shadow of the sun."),
        ]
    )
    assert [d.name for d in report.added] == ["good.md"]
    assert [e.name for e in report.errors] == [
        "empty.txt",
        "binary.txt",
        "latin1.txt",
        "../../outside.txt",
        "broken.pdf",
        "big.txt",
    ]
    assert all(e.name in e.message for e in report.errors)
    after = index.list_documents()
    assert {d.content_hash for d in before} < {d.content_hash for d in after}
    assert [d.name for d in after] == ["first.txt", "good.md"]


class _FailingEmbedder:
    """MiniLM that breaks on its second call, as a dying server or OOM would half-way through."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.name, self.dimension, self.max_tokens = inner.name, inner.dimension, inner.max_tokens

    def encode(self, texts):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("encoder crashed")
        return self.inner.encode(texts)

    def tokenizer(self):
        return self.inner.tokenizer()


def test_a_failure_half_way_rolls_back_that_upload(fresh_index, minilm):  # noqa: F811
    index = fresh_index
    index.add_documents([small_doc("safe.txt", "This document was indexed before.")])
    failing = DocumentIndex(
        index.client, _FailingEmbedder(minilm), IndexSettings(collection=index.name, batch_size=2)
    )
    docs = [parse_file(name, data) for name, data in corpus_files()[:2]]
    # Chroma appends where the embedding function failed ("encoder crashed in add.").
    pattern = (
        re.escape("Indexing stopped (encoder crashed")
        + ".*"
        + re.escape("nothing from this upload was kept.")
    )
    with pytest.raises(VectorLabError, match=pattern):
        failing.add_documents(docs)
    assert [d.name for d in index.list_documents()] == ["safe.txt"]
    assert index.count() == 1


def raw_chunks(index: DocumentIndex, **where) -> list[str]:
    """Ids of every chunk Chroma holds (pending or not), optionally filtered by metadata."""
    return index.collection.get(where=where or None, include=[])["ids"]


def test_an_upload_is_invisible_until_every_chunk_is_stored(chroma_client, minilm, collection_name):  # noqa: F811
    settings = IndexSettings(collection=collection_name, batch_size=4, chunk=ChunkSettings(max_tokens=32))
    index = DocumentIndex(chroma_client, minilm, settings)
    safe = small_doc("safe.txt", "Bees dance to show the hive where the flowers are.")
    index.add_documents([safe])
    long = parse_text(long_text(40), name=KILLED_NAME)
    seen_midway = []

    def look(progress) -> None:  # what every reader sees while the upload is half stored
        if not 0 < progress.done < progress.total or seen_midway:
            return
        other = DocumentIndex(chroma_client, minilm, settings)  # opening removes dead uploads only
        assert other.removed_incomplete == [] and len(raw_chunks(index, complete=False)) == progress.done
        assert other.uploads_in_progress() == 1
        for reader in (index, other):
            assert [d.name for d in reader.list_documents()] == ["safe.txt"]
            assert reader.count() == 1 and not reader.has_document(long.content_hash)
            hits = reader.search(long.text[:200], k=50).hits
            assert [h.doc_name for h in hits] == ["safe.txt"]
            assert reader.chunk_vectors().doc_names == ["safe.txt"]
            assert embedding_map(reader).n_total == 1
            with pytest.raises(InputError, match=re.escape("No indexed document has hash")):
                reader.document_chunks(long.content_hash)
            with pytest.raises(InputError, match=re.escape("No indexed document has hash")):
                reader.delete_document(long.content_hash)
        again = other.add_documents([parse_text(long.text, name="copy.txt")])
        assert (again.added, again.duplicates, again.in_progress) == ([], [], ["copy.txt"])
        seen_midway.append(progress.done)

    report = index.add_documents([long], on_progress=look)
    assert seen_midway and report.in_progress == [] and index.uploads_in_progress() == 0
    n_chunks = len(index.chunker.chunk(long))
    assert [(d.name, d.n_chunks) for d in index.list_documents()] == [("long.txt", n_chunks), ("safe.txt", 1)]
    assert index.count() == n_chunks + 1 and raw_chunks(index, complete=False) == []
    assert index.add_documents([long]).duplicates[0].existing_name == "long.txt"


@pytest.mark.parametrize("interruption", ["streamlit-stop", "streamlit-rerun", "keyboard"])
def test_an_interrupted_upload_leaves_nothing_behind(interruption, fresh_index, minilm):  # noqa: F811
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData

    error = {
        "streamlit-stop": StopException(),
        "streamlit-rerun": RerunException(RerunData()),
        "keyboard": KeyboardInterrupt(),
    }[interruption]
    assert not isinstance(error, Exception)
    settings = IndexSettings(collection=fresh_index.name, batch_size=4, chunk=ChunkSettings(max_tokens=32))
    index = DocumentIndex(fresh_index.client, minilm, settings)
    index.add_documents([small_doc("safe.txt", "This document was indexed before.")])
    long = parse_text(long_text(40), name=KILLED_NAME)

    def stop_after_three_batches(progress) -> None:
        if progress.done >= 12:
            raise error

    with pytest.raises(type(error)):
        index.add_documents([long], on_progress=stop_after_three_batches)
    assert index.uploads_in_progress() == 0 and len(raw_chunks(index)) == 1
    assert [d.name for d in index.list_documents()] == ["safe.txt"]
    report = index.add_documents([long])  # nothing is left that could block or spoil a second try
    assert report.added[0].n_chunks == len(index.chunker.chunk(long)) == index.count() - 1


@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_an_upload_killed_mid_way_is_removed_when_the_index_is_reopened(
    mode,
    tmp_path,
    minilm,  # noqa: F811
    collection_name,  # noqa: F811
    request,
):
    from core.retrieval.recovery import IncompleteUpload

    server = request.getfixturevalue("chroma_server") if mode == "server" else None
    path = tmp_path / "chroma"
    killed = kill_during_upload(collection_name, path=path if server is None else None, server=server)
    long = parse_text(long_text(), name=KILLED_NAME)
    settings = IndexSettings(collection=collection_name, chunk=ChunkSettings(max_tokens=32))
    with client_for(mode, path, server) as client:
        before = DocumentIndex(client, minilm, settings, recover=False)
        stored = len(raw_chunks(before, doc_hash=long.content_hash))
        assert killed.done <= stored < killed.total  # really killed half-way: those chunks are there
        # ... and invisible even before the clean-up
        assert [d.name for d in before.list_documents()] == ["safe.txt"] and before.count() == 1

        index = DocumentIndex(client, minilm, settings)  # opening the index removes the dead upload
        assert index.removed_incomplete == [
            IncompleteUpload(KILLED_NAME, long.content_hash, n_stored=stored, n_chunks=killed.total)
        ]
        assert index.removed_incomplete[0].describe() == (
            f"Removed an incomplete upload of 'long.txt' ({stored} of {killed.total} chunks had been "
            "stored when indexing stopped); upload it again to index it."
        )
        assert raw_chunks(index, doc_hash=long.content_hash) == []
        assert [d.name for d in index.list_documents()] == ["safe.txt"]
        assert {h.doc_name for h in index.search(long.text[:300], k=20).hits} == {"safe.txt"}
        assert DocumentIndex(client, minilm, settings).removed_incomplete == []  # nothing left to remove

        report = index.add_documents([long])  # uploading it again is not refused as "already indexed"
        assert report.duplicates == [] and report.added[0].n_chunks == killed.total
        assert [(d.name, d.n_chunks) for d in index.list_documents()] == [
            ("long.txt", killed.total),
            ("safe.txt", 1),
        ]
        assert index.document_text(long.content_hash) == long.text


# --- collection names -----------------------------------------------------------------------------

NAME_RULE = (
    "is not a valid Chroma name: use 3-512 letters, digits, '.', '_' or '-', "
    "starting and ending with a letter or digit."
)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a..b", "collection 'a..b' is not a valid Chroma name: it must not contain '..'."),
        ("192.168.1.1", "collection '192.168.1.1' is not a valid Chroma name: it must not be an IP address."),
        ("abc\n", f"collection 'abc\\n' {NAME_RULE}"),
        ("ab", f"collection 'ab' {NAME_RULE}"),
        ("_ab", f"collection '_ab' {NAME_RULE}"),
        ("abc.", f"collection 'abc.' {NAME_RULE}"),
        ("a b", f"collection 'a b' {NAME_RULE}"),
        ("café", f"collection 'café' {NAME_RULE}"),
        ("a" * 513, f"collection '{'a' * 513}' {NAME_RULE}"),
    ],
)
def test_collection_names_chroma_refuses_are_refused_with_the_reason(name, message):
    with pytest.raises(SettingsError, match=re.escape(message) + "$"):
        IndexSettings(collection=name)


def test_our_collection_name_rule_is_chromas(chroma_client):  # noqa: F811
    from core.retrieval.store import collection_name_problem

    names = ["a..b", "192.168.1.1", "0.0.0.0", "abc\n", "ab", "_ab", "abc-", "a b", "a" * 513]
    names += ["abc", "a.b", "a-b_c", "1.2.3", "999.999.999.999", "01.02.03.04", "1.2.3.4x", "a" * 512]
    for name in names:
        try:
            chroma_client.get_or_create_collection(name, embedding_function=VectorLabEmbeddingFunction())
        except Exception as e:  # Chroma refuses it: so must we
            assert collection_name_problem(name) is not None, (name, e)
        else:
            chroma_client.delete_collection(name)
            assert collection_name_problem(name) is None, name


def test_a_name_chroma_refuses_is_an_input_error(chroma_client, minilm):  # noqa: F811
    settings = IndexSettings(collection="valid-name")
    settings.collection = "a..b"  # as if our own check had let it through
    message = "Chroma cannot open a collection named 'a..b': "
    with pytest.raises(InputError, match=re.escape(message)):
        DocumentIndex(chroma_client, minilm, settings)


def test_a_collection_filled_by_another_encoder_is_refused(fresh_index, minilm):  # noqa: F811
    index = fresh_index
    index.add_documents([small_doc("a.txt", "Some text.")])

    class Renamed(_FailingEmbedder):
        pass

    other = Renamed(minilm)
    other.name = "another-encoder"
    message = (
        f"Collection '{index.name}' holds 384-d vectors from all-MiniLM-L6-v2, not another-encoder; "
        "choose another collection name."
    )
    with pytest.raises(InputError, match=re.escape(message)):
        DocumentIndex(index.client, other, IndexSettings(collection=index.name))


def test_settings_validate_with_a_fix(minilm, tmp_path):  # noqa: F811
    with pytest.raises(SettingsError, match=re.escape(f"collection 'x' {NAME_RULE}")):
        IndexSettings(collection="x")
    with pytest.raises(SettingsError, match=re.escape("batch_size must be at least 1, got 0; try 64.")):
        IndexSettings(batch_size=0)
    client = make_client(tmp_path / "db")
    try:
        settings = IndexSettings(chunk=ChunkSettings(max_tokens=300))
        with pytest.raises(
            SettingsError,
            match=re.escape(
                "chunk max_tokens (300) is more than all-MiniLM-L6-v2 reads (256); lower it to at most 256."
            ),
        ):
            DocumentIndex(client, minilm, settings)
    finally:
        close_client(client)


# --- clients and the embedding function -----------------------------------------------------------


def test_client_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CHROMA_HOST_ENV, "127.0.0.1")
    monkeypatch.setenv(CHROMA_PORT_ENV, "not-a-port")
    with pytest.raises(InputError, match=re.escape("CHROMA_PORT must be a port number, got 'not-a-port'.")):
        make_client()
    port = free_port()  # nothing listens there
    monkeypatch.setenv(CHROMA_PORT_ENV, str(port))
    with pytest.raises(
        InputError, match=re.escape(f"Could not reach the Chroma server at 127.0.0.1:{port} (")
    ):
        make_client()
    client = make_client(tmp_path / "local")  # an explicit path always means local files
    try:
        assert type(client).__name__ == "Client" and (tmp_path / "local").is_dir()
    finally:
        close_client(client)
    monkeypatch.delenv(CHROMA_HOST_ENV)
    monkeypatch.delenv(CHROMA_PORT_ENV)
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path / "data"))
    client = make_client()
    try:
        assert (tmp_path / "data" / "chroma").is_dir()
    finally:
        close_client(client)


def test_embedding_function_is_registered_and_rebuilds_lazily(minilm):  # noqa: F811
    assert known_embedding_functions[EMBEDDING_FUNCTION_NAME] is VectorLabEmbeddingFunction
    function = VectorLabEmbeddingFunction(minilm)
    assert function.get_config() == {"model": "all-MiniLM-L6-v2"}
    assert function.default_space() == "cosine"
    assert not function.is_legacy()
    rebuilt = VectorLabEmbeddingFunction.build_from_config(function.get_config())
    assert rebuilt._embedder is None  # nothing loaded until Chroma actually embeds
    vectors = function(["one sentence", "another"])
    assert len(vectors) == 2 and vectors[0].shape == (384,)
    with pytest.raises(ValueError, match=re.escape("vectorlab-minilm can only rebuild all-MiniLM-L6-v2")):
        VectorLabEmbeddingFunction.build_from_config({"model": "other"})


def test_metric_rankings_disagree_only_for_unnormalised_vectors():
    query = np.array([1.0, 0.0])
    long_but_off_axis = np.array([10.0, 10.0])  # cosine 0.71, dot 10, L2 10.05
    short_and_aligned = np.array([1.0, 0.1])  # cosine 0.995, dot 1, L2 0.1
    rankings = rank_under_metrics(query, np.stack([long_but_off_axis, short_and_aligned]))
    assert (rankings.cosine, rankings.dot, rankings.l2) == ([1, 0], [0, 1], [1, 0])
    assert not rankings.agree
    unit = np.stack([v / np.linalg.norm(v) for v in (long_but_off_axis, short_and_aligned)])
    assert rank_under_metrics(query, unit).agree
    hits = [
        Hit(1, "a", "a.txt", "h", 0, 0, 1, "a", cosine=0.9, dot=0.5, l2=0.4),
        Hit(2, "b", "b.txt", "h", 0, 0, 1, "b", cosine=0.8, dot=0.7, l2=0.6),
    ]
    assert not rankings_agree(hits)


# --- persistence across processes -----------------------------------------------------------------

_REOPEN = """
import json, sys
from core.retrieval.encoders import load_sentence_embedder
from core.retrieval.index import DocumentIndex, IndexSettings
from core.retrieval.store import make_client
client = make_client(sys.argv[1])
index = DocumentIndex(client, load_sentence_embedder(), IndexSettings(collection=sys.argv[2]))
hits = index.search(sys.argv[3], k=3).hits
print(json.dumps({
    "documents": [[d.name, d.content_hash, d.n_chunks] for d in index.list_documents()],
    "hits": [[h.id, round(h.cosine, 5)] for h in hits],
}))
"""


def test_index_survives_closing_and_reopening_in_a_new_process(tmp_path, minilm, collection_name):  # noqa: F811
    path = tmp_path / "persist"
    query = "How do bees tell each other where food is?"
    client = make_client(path)
    index = DocumentIndex(client, minilm, IndexSettings(collection=collection_name))
    index.add_files(corpus_files()[:8])
    documents = [[d.name, d.content_hash, d.n_chunks] for d in index.list_documents()]
    hits = [[h.id, round(h.cosine, 5)] for h in index.search(query, k=3).hits]
    close_client(client)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(CHROMA_HOST_ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", _REOPEN, str(path), collection_name, query],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reopened = json.loads(done.stdout.strip().splitlines()[-1])
    assert reopened["documents"] == documents
    assert [h[0] for h in reopened["hits"]] == [h[0] for h in hits]
    assert [h[1] for h in reopened["hits"]] == pytest.approx([h[1] for h in hits], abs=1e-4)


def test_store_location_names_the_store_without_connecting(monkeypatch, tmp_path):
    monkeypatch.delenv(CHROMA_HOST_ENV, raising=False)
    monkeypatch.delenv(CHROMA_PORT_ENV, raising=False)
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path / "a"))
    local = store_location()
    assert (local.kind, local.path) == ("embedded", (tmp_path / "a" / "chroma").resolve())
    assert (
        local.key == f"embedded:{local.path}"
        and local.describe() == f"embedded Chroma, files in {local.path}"
    )
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(tmp_path / "b"))
    assert store_location().key != local.key  # two data directories are two stores
    monkeypatch.setenv(CHROMA_PORT_ENV, "9000")
    server = store_location()
    assert (server.kind, server.host, server.port, server.key) == (
        "server",
        "localhost",
        9000,
        "server:localhost:9000",
    )
    assert server.describe() == "the Chroma server at localhost:9000 (from CHROMA_HOST/CHROMA_PORT)"
    assert store_location(tmp_path / "c").kind == "embedded"  # an explicit path wins over the server


def test_hit_context_places_the_chunk_in_its_document():
    text = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota."
    pieces = ["Alpha beta gamma.", "Delta epsilon zeta.", "Eta theta iota."]
    chunks = [
        Chunk("d.txt", "h", i, text.index(t), text.index(t) + len(t), t, 5) for i, t in enumerate(pieces)
    ]
    hit = Hit(1, "h-00001", "d.txt", "h", 1, 18, 37, "Delta epsilon zeta.", cosine=0.9, dot=0.9, l2=0.4)
    whole = hit_context(hit, chunks, context_chars=100)
    assert (whole.before, whole.text, whole.after) == (
        "Alpha beta gamma. ",
        "Delta epsilon zeta.",
        " Eta theta iota.",
    )
    assert whole.at_start and whole.at_end
    cut = hit_context(hit, chunks, context_chars=8)
    assert (cut.before, cut.after) == ("gamma. ", " Eta")  # whole words only
    assert not cut.at_start and not cut.at_end
    html = hit_context_html(cut, anchor="hit-1")
    assert html.startswith('<div id="hit-1"') and "…gamma. " in html and " Eta…" in html
    assert '<mark style="background: #fde68a; padding: 0 2px;">Delta epsilon zeta.</mark>' in html
    nasty = Hit(1, "x", "d", "h", 0, 0, 8, "<script>", cosine=1.0, dot=1.0, l2=0.0)
    assert "<script>" not in hit_context_html(hit_context(nasty, []), anchor='"><x')


def test_merge_chunks_rebuilds_the_document_once():
    from core.retrieval.chunking import Chunk, merge_chunks

    text = "alpha beta gamma delta epsilon zeta"
    spans = [(0, 16), (11, 28), (23, 36)]  # overlapping, out of order below
    chunks = [Chunk("d", "h", i, a, b, text[a:b], 3) for i, (a, b) in enumerate(spans)]
    assert merge_chunks(list(reversed(chunks))) == text
    gap = [Chunk("d", "h", 0, 0, 5, "alpha", 1), Chunk("d", "h", 1, 6, 10, "beta", 1)]
    assert merge_chunks(gap) == "alpha beta"
