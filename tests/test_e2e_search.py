"""Real browser on the Search station: files go through Chromium's file chooser, get indexed, a
paraphrased question finds its document, and an answer's source links jump to their chunks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fixtures_search import long_text, minilm  # noqa: F401  (minilm: fixture)
from tests.test_e2e import (  # noqa: F401  (browser, page: fixtures)
    Server,
    _require_browser,
    assert_no_exception,
    browser,
    page,
    wait_idle,
)

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"


@pytest.fixture(scope="module")
def search_server(tmp_path_factory, tiny_gpt2_dir):
    """The app on the tiny GPT-2 with a data directory of its own, so the index starts empty."""
    _require_browser()
    srv = Server(str(tiny_gpt2_dir), tmp_path_factory.mktemp("e2e-search"))
    yield srv
    srv.stop()


def open_search_page(pg, url: str) -> None:
    pg.goto(url)
    wait_idle(pg)
    pg.locator('[data-testid="stSidebarNavLink"]', has_text="Vector search & RAG").click()
    wait_idle(pg)
    pg.get_by_role("heading", name="7 · Vector search & RAG").wait_for()


def click_and_wait(pg, name: str) -> None:
    # Only the page's own buttons: a table's toolbar has a "Search" button too.
    pg.locator('[data-testid^="stBaseButton-"]:not([kind="elementToolbar"])').get_by_text(
        name, exact=True
    ).click()
    wait_idle(pg)


def slider_to_minimum(pg, label: str) -> None:
    pg.locator('[data-testid="stSlider"]', has_text=label).get_by_role("slider").press("Home")
    wait_idle(pg)


def test_upload_index_and_find_a_paraphrase(search_server, page, tmp_path):  # noqa: F811
    open_search_page(page, search_server.url)
    binary = tmp_path / "photo.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with page.expect_file_chooser() as chooser:
        page.locator('[data-testid="stFileUploaderDropzone"]').click()
    chooser.value.set_files([str(CORPUS / "honeybees.txt"), str(CORPUS / "tides.txt"), str(binary)])
    wait_idle(page)
    page.get_by_text("'photo.txt' looks like a binary file (it contains NUL bytes), not text.").wait_for()
    page.get_by_text("Preview: where the chunks will be cut").wait_for()
    assert_no_exception(page, "search-uploaded")

    click_and_wait(page, "Index")
    page.get_by_text("Indexed 2 documents").wait_for()
    assert_no_exception(page, "search-indexed")

    page.get_by_role("textbox", name="Question or phrase").fill(
        "How do worker insects tell the colony where to find food?"
    )
    click_and_wait(page, "Search")
    page.get_by_text("[1] honeybees.txt").wait_for()  # the first hit's header names the document
    assert page.locator("#hit-1 mark").count() == 1  # the chunk is highlighted inside its context
    assert_no_exception(page, "search-results")


def test_answer_links_to_its_sources(search_server, page):  # noqa: F811
    open_search_page(page, search_server.url)
    page.get_by_role("textbox", name="…or paste text").fill(
        "The zorblax festival is held every spring in the valley of Quentin."
    )
    page.get_by_role("textbox", name="Name for the pasted text (optional)").fill("zorblax.txt")
    page.get_by_role("textbox", name="Name for the pasted text (optional)").press("Enter")
    wait_idle(page)
    click_and_wait(page, "Index")
    page.get_by_text("Indexed 1 document, 1 chunk: 'zorblax.txt'").wait_for()

    slider_to_minimum(page, "Top k")  # k = 1: the tiny GPT-2 reads only 128 tokens
    page.get_by_role("textbox", name="Question or phrase").fill("When is the zorblax festival held?")
    click_and_wait(page, "Search")
    slider_to_minimum(page, "New tokens to generate")
    click_and_wait(page, "Answer")
    page.get_by_text("Sources the model was given").wait_for()
    assert_no_exception(page, "search-answered")

    page.locator('a[href="#hit-1"]').last.click()
    page.wait_for_function("window.location.hash === '#hit-1'")
    page.locator("#hit-1").wait_for(state="visible")
    box = page.locator("#hit-1").bounding_box()
    assert box is not None and 0 <= box["y"] < page.viewport_size["height"]


def test_cancel_stops_indexing_and_keeps_nothing(tmp_path, tiny_gpt2_dir, page, minilm):  # noqa: F811
    """Cancel, pressed while a long text is being embedded, stops the running script: the page says so
    at once, the stopped run removes the chunks it had stored, and the document never appears."""
    from core.retrieval.index import DocumentIndex, IndexSettings
    from core.retrieval.store import close_client, make_client

    srv = Server(str(tiny_gpt2_dir), tmp_path)
    try:
        open_search_page(page, srv.url)
        text = tmp_path / "long.txt"
        text.write_text(long_text(3000), encoding="utf-8")  # about 200 KB: minutes of embedding here
        with page.expect_file_chooser() as chooser:
            page.locator('[data-testid="stFileUploaderDropzone"]').click()
        chooser.value.set_files([str(text)])
        wait_idle(page)
        page.get_by_text("Preview: where the chunks will be cut").wait_for()
        page.locator('[data-testid="stBaseButton-primary"]').get_by_text("Index", exact=True).click()
        progress = re.compile(r"Embedded [\d,]+ of [\d,]+ chunks · about .* left")
        page.get_by_text(progress).wait_for(timeout=120_000)
        page.locator('[data-testid^="stBaseButton-"]').get_by_text("Cancel", exact=True).click()
        page.get_by_text("Indexing cancelled; nothing from this upload was kept.").wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_role("tab", name="Documents (0)").wait_for()
        assert_no_exception(page, "search-cancelled")
        for _ in range(60):  # the stopped run finishes its batch, then removes what it stored
            open_search_page(page, srv.url)
            if not page.get_by_text("being indexed into 'documents' by another run").count():
                break
            page.wait_for_timeout(2000)
        else:
            raise AssertionError("the stopped run never finished removing its chunks")
    finally:
        srv.stop()
    client = make_client(tmp_path / "data" / "chroma")
    try:
        index = DocumentIndex(client, minilm, IndexSettings())
        assert index.removed_incomplete == []  # the stopped run removed its own chunks
        assert index.list_documents() == [] and index.collection.count() == 0
    finally:
        close_client(client)
