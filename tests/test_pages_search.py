"""The Embeddings and Search stations under AppTest: each page alone and through app.py, widgets driven
by key, uploads through the real file_uploader widget, search, RAG with the tiny GPT-2, bad input.

Every test gets its own VECTORLAB_DATA_DIR, so no two tests share an index; ui.search_state keys its
cached Chroma client by the resolved store path for exactly this reason."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.retrieval.store import CHROMA_HOST_ENV, CHROMA_PORT_ENV
from tests.fixtures_search import kill_during_upload, long_text
from tests.test_pages import TIMEOUT, app_test, assert_clean, metrics
from ui import search_state
from ui.stations import STATIONS

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus"
EMBEDDINGS = "pages/6_embeddings.py"
SEARCH = "pages/7_search.py"
NOTHING_INDEXED = "Nothing is indexed in 'documents' yet; upload a document first."


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A private data directory and the embedded store (no Chroma server from the environment)."""
    path = tmp_path / "data"
    monkeypatch.setenv("VECTORLAB_DATA_DIR", str(path))
    monkeypatch.delenv(CHROMA_HOST_ENV, raising=False)
    monkeypatch.delenv(CHROMA_PORT_ENV, raising=False)
    return path


def corpus(*names: str) -> list[tuple[str, bytes, str]]:
    """Corpus files as the uploader widget takes them: (name, bytes, mime type)."""
    return [(name, (CORPUS / name).read_bytes(), "text/plain") for name in names]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def upload_and_index(at: AppTest, files: list[tuple[str, bytes, str]]) -> AppTest:
    at.file_uploader(key="search_files").set_value(files).run()
    return at.button(key="search_index_go").click().run()


def search(at: AppTest, query: str, k: int | None = None) -> AppTest:
    at.text_input(key="search_query_input").set_value(query)
    if k is not None:
        at.slider(key="search_k").set_value(k)
    return at.button(key="search_go").click().run()


def documents_table(at: AppTest):
    """The Documents tab's table (name, kind, chunks, characters, hash)."""
    return next(d.value for d in at.dataframe if "hash" in d.value.columns)


def collections_table(at: AppTest):
    return next(d.value for d in at.dataframe if "encoder" in d.value.columns)


def store_line(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Store:**"))


def hit_headers(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**[")]


# ---------------------------------------------------------------- both pages


@pytest.mark.parametrize("page", [EMBEDDINGS, SEARCH])
def test_page_runs_on_its_own(page, tiny_gpt2_dir, data_dir):
    at = app_test(page, str(tiny_gpt2_dir)).run()
    assert_clean(at)
    number = 6 if page == EMBEDDINGS else 7
    assert at.title[0].value.startswith(f"{number} ·")


def test_both_stations_are_reached_through_app_navigation(tiny_gpt2_dir, data_dir):
    at = app_test("app.py", str(tiny_gpt2_dir)).run()
    assert_clean(at)
    assert {6, 7} <= {s.number for s in STATIONS}
    at.switch_page(EMBEDDINGS).run()
    assert_clean(at)
    assert at.title[0].value == "6 · Sentence & document embeddings"
    assert metrics(at)["Items"] == "9"
    at.switch_page(SEARCH).run()
    assert_clean(at)
    assert at.title[0].value == "7 · Vector search & RAG"


# ---------------------------------------------------------------- page 6


def test_embeddings_page_defaults_group_the_three_topics(tiny_gpt2_dir, data_dir):
    at = app_test(EMBEDDINGS, str(tiny_gpt2_dir)).run()
    assert_clean(at)
    m = metrics(at)
    assert (m["Items"], m["Vector width d"], m["Lengths ‖a‖"]) == ("9", "384", "1.000–1.000")
    assert m["Clusters"] == "3"
    assert len(at.get("vega_lite_chart")) == 3  # similarity heatmap, the 2-D map, MiniLM vs the LM
    clusters = at.dataframe[1].value.set_index("item")["cluster"]
    sentences = list(clusters.index)
    by_topic = [
        {clusters[s] for s in sentences if any(w in s for w in words)}
        for words in (
            ["football", "tennis", "marathon"],
            ["sauce", "dough", "pasta"],
            ["laptop", "software", "processor"],
        )
    ]
    assert all(len(topic) == 1 for topic in by_topic) and len(set.union(*by_topic)) == 3
    labels = at.dataframe[2].value["label"].tolist()
    assert labels == ["sports"] * 3 + ["cooking"] * 3 + ["computers"] * 3


def test_embeddings_page_widgets(tiny_gpt2_dir, data_dir):
    at = app_test(EMBEDDINGS, str(tiny_gpt2_dir)).run()
    sentences = "\n".join(
        [
            "The cat sat on the mat.",
            "",
            "   ",
            "Stock prices fell sharply on Monday.",
            "The cat sat on a mat.",
            "Bake the cake for forty minutes.",
        ]
    )
    at.text_area(key="emb_sentences").input(sentences).run()
    assert_clean(at)
    assert metrics(at)["Items"] == "4"  # empty lines are ignored
    pairs = at.dataframe[0].value
    assert (pairs.iloc[0]["first"], pairs.iloc[0]["second"]) == (
        "The cat sat on the mat.",
        "The cat sat on a mat.",
    )
    assert pairs["cosine"].is_monotonic_decreasing and pairs.iloc[0]["cosine"] > 0.9

    at.number_input(key="emb_k").set_value(2).run()
    assert_clean(at)
    assert metrics(at)["Clusters"] == "2"
    clusters = at.dataframe[1].value.set_index("item")["cluster"]
    assert clusters["The cat sat on the mat."] == clusters["The cat sat on a mat."]

    at.text_input(key="emb_labels").input("animals, finance, baking").run()
    assert_clean(at)
    assert at.dataframe[2].value["label"].tolist() == ["animals", "finance", "animals", "baking"]

    at.selectbox(key="emb_item").select(2).run()  # "The cat sat on a mat."
    at.slider(key="emb_n_similar").set_value(2).run()
    assert_clean(at)
    similar = at.dataframe[3].value
    assert similar["item"].tolist()[0] == "The cat sat on the mat." and len(similar) == 2


def test_embeddings_page_bad_input_says_why(tiny_gpt2_dir, data_dir):
    at = app_test(EMBEDDINGS, str(tiny_gpt2_dir)).run()
    at.number_input(key="emb_k").set_value(5).run()
    at.text_area(key="emb_sentences").input("One sentence.\nAnother one.\nA third.").run()
    assert not at.exception
    assert errors(at) == ["k must be between 1 and the number of items (3); got 5."]
    assert "Clusters" not in metrics(at)

    at.text_area(key="emb_sentences").input("Only one sentence.\n\n   \n").run()
    assert not at.exception
    assert errors(at) == [
        "Type at least 2 sentences, one per line, to compare them (found 1; empty lines are ignored)."
    ]

    at.text_area(key="emb_sentences").input("\n".join(f"Sentence number {i}." for i in range(45))).run()
    assert_clean(at)
    assert metrics(at)["Items"] == "30"
    assert [w.value for w in at.warning] == [
        "Only the first 30 sentences are compared; 15 more lines were left out."
    ]

    at.text_input(key="emb_labels").input(" , ,").run()
    assert errors(at) == ["Give at least one label to classify into."]
    at.text_input(key="emb_template").input("no placeholder").run()
    assert errors(at) == ["Give at least one label to classify into."]
    at.text_input(key="emb_labels").input("a, b").run()
    assert errors(at) == ["The label template must contain {} where the label goes, e.g. 'About {}.'"]

    at.text_area(key="emb_pairs").input("one | two\njust one sentence").run()
    assert errors(at)[-1] == (
        "Line 2 is not a pair: write two sentences separated by one '|', "
        "like 'A man plays guitar | Someone strums a guitar'."
    )


def test_minilm_separates_pairs_that_the_lm_cannot(tiny_gpt2_dir, data_dir):
    at = app_test(EMBEDDINGS, str(tiny_gpt2_dir)).run()
    assert_clean(at)
    table = at.dataframe[-1].value
    minilm = "all-MiniLM-L6-v2"
    lm = next(c for c in table.columns if c.endswith("mean-pooled"))
    assert list(table.columns) == ["first", "second", minilm, lm]
    # The guitar paraphrase scores far above the unrelated cat / stock-market pair under MiniLM.
    assert table[minilm][0] - table[minilm][3] > 0.5
    assert any("Search uses a trained sentence encoder" in i.value for i in at.info)


def test_embeddings_page_reads_chunks_indexed_on_the_search_page(tiny_gpt2_dir, data_dir):
    at = app_test(EMBEDDINGS, str(tiny_gpt2_dir)).run()
    at.toggle(key="emb_use_chunks").set_value(True).run()
    assert not at.exception
    assert errors(at) == [NOTHING_INDEXED]

    search_page = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    upload_and_index(search_page, corpus("tides.txt", "sourdough.txt", "chess.txt"))
    assert_clean(search_page)
    at.run()
    assert_clean(at)
    n_chunks = sum(int(n) for n in documents_table(search_page)["chunks"])
    assert metrics(at)["Items"] == str(n_chunks)
    assert at.dataframe[0].value["first"].str.contains(r"\.txt #\d+$").all()


# ---------------------------------------------------------------- page 7


def test_upload_index_query_and_inspect(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    at.file_uploader(key="search_files").set_value(
        corpus("honeybees.txt", "volcanoes.txt", "tides.txt", "sourdough.txt")
    ).run()
    assert_clean(at)
    assert metrics(at)["Chunks"] == "2"  # the preview of the first file
    assert any("#0 · " in h.value for h in at.html)  # chunk badges in the boundary preview
    at.slider(key="search_chunk_tokens").set_value(64).run()
    assert int(metrics(at)["Chunks"]) > 2
    assert metrics(at)["Largest chunk"].endswith("of 64 tokens")

    at.button(key="search_index_go").click().run()
    assert_clean(at)
    assert any(s.value.startswith("Indexed 4 documents") for s in at.success)
    documents = documents_table(at)
    assert documents["name"].tolist() == ["honeybees.txt", "sourdough.txt", "tides.txt", "volcanoes.txt"]
    assert (documents["chunks"] > 1).all()

    search(at, "How do worker insects tell the colony where to find food?", k=3)
    assert_clean(at)
    headers = hit_headers(at)
    assert len(headers) == 3 and headers[0].startswith("**[1] honeybees\\.txt**")
    assert any('<mark style="background: #fde68a' in h.value and 'id="hit-1"' in h.value for h in at.html)
    assert any(s.value.startswith("All three metrics rank these hits in the same order") for s in at.success)
    assert len(at.get("vega_lite_chart")) == 2  # the query and hit 1 as vectors; the query among the chunks

    # Indexing the same files again adds nothing; the duplicates are named.
    at.button(key="search_index_go").click().run()
    assert "'tides.txt' is already indexed; skipped." in [i.value for i in at.info]
    assert len(documents_table(at)) == 4


def test_pasted_text_rag_answer_with_the_tiny_gpt2(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    at.text_area(key="search_paste").input("Honeybees dance to show the hive where the flowers are.")
    at.text_input(key="search_paste_name").input("bees.txt").run()
    at.button(key="search_index_go").click().run()
    assert_clean(at)
    assert documents_table(at)["name"].tolist() == ["bees.txt"]

    search(at, "How do bees find flowers?", k=1)
    assert_clean(at)
    prompt = at.text_area(key="rag_prompt").value
    assert prompt.startswith("Answer the question using only the numbered sources.")
    assert "[1] (bees.txt, chunk 0)\nHoneybees dance" in prompt and prompt.endswith("Answer:")
    at.slider(key="rag_new_tokens").set_value(8).run()
    at.button(key="rag_go").click().run()
    assert_clean(at)
    answer = at.session_state[search_state.RAG_ANSWER][1]
    assert answer.answer and answer.n_prompt_tokens < 128
    assert [h.doc_name for h in answer.sources] == ["bees.txt"]
    sources = next(h.value for h in at.html if h.value.startswith("<ol"))
    assert '<a href="#hit-1">[1]</a> bees.txt, chunk #0' in sources

    # An edited prompt is what the model reads.
    at.text_area(key="rag_prompt").input("Bees").run()
    at.button(key="rag_go").click().run()
    assert_clean(at)
    assert at.session_state[search_state.RAG_ANSWER][1].prompt_text == "Bees"
    at.button(key="rag_reset").click().run()
    assert at.text_area(key="rag_prompt").value == prompt


def test_rag_prompt_too_long_for_the_model_is_a_message(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    upload_and_index(at, corpus("tides.txt", "chess.txt"))
    search(at, "What makes the sea rise and fall?", k=3)
    assert_clean(at)
    assert any("reads at most 128" in w.value for w in at.warning)
    at.button(key="rag_go").click().run()
    assert not at.exception
    [message] = errors(at)
    assert message.startswith("The prompt is ") and message.endswith(
        "but the model reads at most 128; use fewer sources, shorter chunks or fewer new tokens."
    )


def test_search_page_bad_input_gives_the_exact_message(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    search(at, "a real question")
    assert not at.exception
    assert errors(at) == [NOTHING_INDEXED]

    at.button(key="search_index_go").click().run()
    assert errors(at) == ["Nothing to index yet: upload files or paste text first.", NOTHING_INDEXED]
    at.text_area(key="search_paste").input("   \n ").run()
    at.button(key="search_index_go").click().run()
    assert errors(at) == ["The pasted text is empty; paste or type something first.", NOTHING_INDEXED]

    binary = ("photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "text/plain")
    message = "'photo.txt' looks like a binary file (it contains NUL bytes), not text."
    at.text_area(key="search_paste").input("").run()
    at.file_uploader(key="search_files").set_value([binary, *corpus("tides.txt")]).run()
    assert errors(at) == [message, NOTHING_INDEXED]
    at.button(key="search_index_go").click().run()
    assert errors(at) == [message]  # the good file was indexed, so the search now runs
    assert documents_table(at)["name"].tolist() == ["tides.txt"]

    at.file_uploader(key="search_files").set_value([binary]).run()
    at.button(key="search_index_go").click().run()
    assert errors(at) == [message, "None of the uploads can be indexed; see the messages above."]
    assert documents_table(at)["name"].tolist() == ["tides.txt"]  # nothing indexed was lost

    for blank in ["", "   "]:
        search(at, blank)
        assert not at.exception
        assert errors(at) == [message, "Type a question or phrase to search for."]


def test_delete_a_document_and_a_collection(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    upload_and_index(at, corpus("tides.txt", "chess.txt"))
    search(at, "chess openings")
    assert hit_headers(at)[0].startswith("**[1] chess\\.txt**")
    at.selectbox(key="search_doc").select(0).run()  # chess.txt (sorted by name)
    at.button(key="search_doc_delete").click().run()
    assert_clean(at)
    assert "Deleted 'chess.txt' (2 chunks)." in [s.value for s in at.success]
    assert documents_table(at)["name"].tolist() == ["tides.txt"]

    # A second collection, then deleting the first only after confirming.
    at.text_input(key="search_new_collection").input("notes").run()
    assert_clean(at)
    assert at.session_state[search_state.COLLECTION] == "notes"
    assert "**Collection 'notes':** 0 chunks" in store_line(at)
    assert collections_table(at)["collection"].tolist() == ["documents", "notes"]
    at.selectbox(key="search_collection_del").set_value("documents").run()
    assert at.button(key="search_collection_delete").disabled
    at.checkbox(key="search_collection_confirm").check().run()
    at.button(key="search_collection_delete").click().run()
    assert_clean(at)
    assert "Deleted the collection 'documents' and all its chunks." in [s.value for s in at.success]
    assert collections_table(at)["collection"].tolist() == ["notes"]
    assert not at.checkbox(key="search_collection_confirm").value

    at.text_input(key="search_new_collection").input("no").run()  # too short for Chroma
    assert errors(at) == [
        "collection 'no' is not a valid Chroma name: use 3-512 letters, digits, '.', '_' or '-', "
        "starting and ending with a letter or digit."
    ]
    assert at.session_state[search_state.COLLECTION] == "notes"
    at.selectbox(key="search_collection").set_value("notes").run()
    assert_clean(at)


def test_index_lives_under_the_data_dir_and_outlasts_the_client(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    upload_and_index(at, corpus("glaciers.txt"))
    assert str(data_dir.resolve() / "chroma") in store_line(at)
    assert (data_dir / "chroma" / "chroma.sqlite3").exists()
    search_state._client.clear()  # as after a restart: the next run opens the files again
    again = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    assert_clean(again)
    assert documents_table(again)["name"].tolist() == ["glaciers.txt"]
    search(again, "How do moving ice sheets shape mountain valleys?", k=1)
    assert hit_headers(again)[0].startswith("**[1] glaciers\\.txt**")


def test_an_unreachable_chroma_server_is_a_message(tiny_gpt2_dir, data_dir, monkeypatch):
    from tests.fixtures_search import free_port

    monkeypatch.setenv(CHROMA_HOST_ENV, "127.0.0.1")
    monkeypatch.setenv(CHROMA_PORT_ENV, str(free_port()))
    at = AppTest.from_file(str(ROOT / SEARCH), default_timeout=TIMEOUT)
    at.session_state["vl_model_spec"] = str(tiny_gpt2_dir)
    at.run()
    assert not at.exception
    [message] = errors(at)
    assert message.startswith("Could not reach the Chroma server at 127.0.0.1:")


# ---------------------------------------------------------------- odd uploads, odd names, stopped uploads


def test_the_uploader_allows_what_core_and_the_server_allow(tiny_gpt2_dir, data_dir):
    from core.retrieval.limits import MAX_UPLOAD_MB

    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert at.file_uploader(key="search_files").proto.max_upload_size_mb == MAX_UPLOAD_MB
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB


def test_file_names_streamlit_would_refuse_are_messages(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    files = [
        ("a\x00b.txt", b"Hidden by a NUL byte.", "text/plain"),
        ("prog.exe", b"MZ", "application/octet-stream"),
        *corpus("tides.txt"),
    ]
    at.file_uploader(key="search_files").set_value(files).run()
    assert not at.exception
    expected = [
        "'a\\x00b.txt' has control characters in its name; rename the file and upload it again.",
        "'prog.exe' has an unsupported type (.exe); upload one of: .txt, .md, .markdown, .pdf, .docx, "
        ".html, .htm.",
    ]
    assert errors(at) == expected
    upload_and_index(at, files)
    assert not at.exception and errors(at) == expected
    assert documents_table(at)["name"].tolist() == ["tides.txt"]


def test_collection_names_chroma_refuses_keep_the_page_working(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    for name, reason in [
        ("a..b", "it must not contain '..'."),
        ("192.168.1.1", "it must not be an IP address."),
    ]:
        at.text_input(key="search_new_collection").input(name).run()
        assert not at.exception
        assert errors(at) == [f"collection '{name}' is not a valid Chroma name: {reason}"]
        assert at.session_state[search_state.COLLECTION] == "documents"

    stale = app_test(SEARCH, str(tiny_gpt2_dir))
    stale.session_state[search_state.COLLECTION] = "a..b"  # a session holding a name from elsewhere
    stale.run()
    assert not stale.exception
    assert errors(stale) == ["collection 'a..b' is not a valid Chroma name: it must not contain '..'."]
    assert "Using the 'documents' collection instead." in [i.value for i in stale.info]
    upload_and_index(stale, corpus("tides.txt"))  # the page keeps working
    assert_clean(stale)
    assert documents_table(stale)["name"].tolist() == ["tides.txt"]


def test_an_upload_killed_mid_way_is_removed_and_the_user_told(tiny_gpt2_dir, data_dir):
    killed = kill_during_upload("documents", path=data_dir / "chroma")
    at = app_test(SEARCH, str(tiny_gpt2_dir)).run()
    assert_clean(at)
    [warning] = [w.value for w in at.warning]
    stored = re.fullmatch(
        re.escape("Removed an incomplete upload of 'long.txt' (")
        + r"(\d+)"
        + re.escape(
            f" of {killed.total} chunks had been stored when indexing stopped); upload it again to index it."
        ),
        warning,
    )
    assert stored is not None, warning
    assert killed.done <= int(stored.group(1)) < killed.total
    assert documents_table(at)["name"].tolist() == ["safe.txt"]
    at.run()
    assert not at.warning  # told once

    at.text_area(key="search_paste").input(long_text())
    at.text_input(key="search_paste_name").input("long.txt")
    at.slider(key="search_chunk_tokens").set_value(32).run()
    at.button(key="search_index_go").click().run()
    assert_clean(at)
    table = documents_table(at).set_index("name")["chunks"]
    assert table.to_dict() == {"long.txt": killed.total, "safe.txt": 1}


def test_indexing_stopped_by_a_change_on_the_page_is_reported(tiny_gpt2_dir, data_dir):
    at = app_test(SEARCH, str(tiny_gpt2_dir))
    at.session_state[search_state.INDEXING] = ["long.txt"]  # what a run stopped mid-indexing leaves
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning] == [
        "Indexing 'long.txt' stopped because the page changed while it ran; nothing from it was kept. "
        "Index again and leave the page as it is until it finishes."
    ]
    at.run()
    assert not at.warning
