"""Documents keep their structure: HTML and .docx become Markdown without navigation, PDFs keep their
pages and outline, and every chunk knows its heading path and page, stored and shown with its hits."""

from __future__ import annotations

import io
import re
from pathlib import Path

import chromadb
import pytest
from chromadb.config import Settings

from core.retrieval.chunking import (
    Chunker,
    ChunkSettings,
    heading_path_at,
    markdown_headings,
    preview_chunks,
    source_label,
)
from core.retrieval.documents import parse_file
from core.retrieval.index import DocumentIndex, IndexSettings
from core.views.search import chunks_html
from tests.fixtures_search import minilm  # noqa: F401  (fixture)

MANUALS = Path(__file__).resolve().parent / "data" / "manuals"


def manual(name: str):
    return parse_file(name, (MANUALS / name).read_bytes())


def squash(text: str) -> str:
    return " ".join(text.split())


# --- HTML ----------------------------------------------------------------------------------------


def test_texinfo_navigation_and_index_links_are_dropped():
    doc = manual("tidelog-installation.html")
    for furniture in ("Next:", "Previous:", "Up:", "[Index]", "Contents", "¶", "makeinfo", "accesskey"):
        assert furniture not in doc.text
    # the mini table of contents is navigation too: each subsection title appears once, as its heading
    assert doc.text.count("Requirements") == 1
    assert doc.text.startswith("## 2 Installation\n\nThis chapter explains")


def test_html_headings_become_markdown_headings_in_order():
    doc = manual("tidelog-installation.html")
    headings = [(h.level, h.title) for h in markdown_headings(doc.text)]
    assert headings == [
        (2, "2 Installation"),
        (3, "2.1 Requirements"),
        (3, "2.2 Installing the packages"),
        (3, "2.3 udev rules"),
        (4, "2.3.1 plugdev"),
        (4, "2.3.2 Rules on immutable systems"),
        (3, "2.4 First start"),
    ]


def test_inline_elements_stay_inside_their_sentence():
    html = (
        b"<body><nav><a href='/'>Home</a> | <a href='/docs'>Docs</a></nav><header>Site</header>"
        b"<h1>Setup</h1><p>Add the user to the <code>plugdev</code> group with <var>NAME</var> and "
        b"<b>log in</b> again.</p><ul><li>first <em>item</em></li><li>second</li></ul>"
        b"<pre>usermod -aG plugdev NAME\nnewgrp plugdev</pre>"
        b"<footer>(c) Tidewater</footer></body>"
    )
    doc = parse_file("setup.html", html)
    assert doc.text == (
        "# Setup\n\nAdd the user to the `plugdev` group with NAME and **log in** again.\n\n"
        "- first *item*\n- second\n\n```\nusermod -aG plugdev NAME\nnewgrp plugdev\n```"
    )


def test_identifiers_keep_their_underscores():
    doc = parse_file("keys.html", b"<p>Set <code>allow_root</code> and TIDELD_UPLOAD__ENDPOINT.</p>")
    assert doc.text == "Set `allow_root` and TIDELD_UPLOAD__ENDPOINT."


# --- DOCX ----------------------------------------------------------------------------------------


def test_docx_headings_lists_tables_and_code_become_markdown():
    doc = manual("tidelog-runbook.docx")
    assert doc.text.startswith("# Operations runbook\n\nRoutine procedures")
    assert "## Backups\n\nTake a snapshot" in doc.text
    assert "- Keep at least the last three snapshots.\n- Restore with tidectl restore FILE" in doc.text
    assert "```\ntidectl snapshot --output /srv/backup/tidelog.tar\nsudo apt upgrade" in doc.text
    assert "| tideld_buffer_fill_ratio | how full the in-memory buffer is, 0 to 1 |" in doc.text
    assert "internal" not in doc.text  # the page header is not body text


def test_docx_numbered_lists_are_numbered():
    import docx

    document = docx.Document()
    document.add_heading("Steps", level=2)
    for step in ("Stop the daemon.", "Flash the firmware."):
        document.add_paragraph(step, style="List Number")
    buffer = io.BytesIO()
    document.save(buffer)
    doc = parse_file("steps.docx", buffer.getvalue())
    assert doc.text == "## Steps\n\n1. Stop the daemon.\n2. Flash the firmware."


# --- PDF -----------------------------------------------------------------------------------------


def test_pdf_outline_entries_become_headings_and_pages_are_kept():
    doc = manual("tidelog-troubleshooting.pdf")
    assert "### E205 BUFFER_OVERFLOW\n" in doc.text
    assert doc.page_numbers == (1, 2, 3, 4, 5)
    assert doc.page_starts[0] == 0 and list(doc.page_starts) == sorted(doc.page_starts)
    for start, number in zip(doc.page_starts, doc.page_numbers, strict=True):
        assert doc.page_at(start) == number
        assert doc.text.startswith(("#", "Tidelog"), start)  # a page begins with a heading or its footer


def test_pdf_chunks_carry_the_page_their_text_is_on(minilm):  # noqa: F811
    from pypdf import PdfReader

    data = (MANUALS / "tidelog-troubleshooting.pdf").read_bytes()
    pages = [squash(p.extract_text()) for p in PdfReader(io.BytesIO(data)).pages]
    doc = parse_file("tidelog-troubleshooting.pdf", data)
    chunks = Chunker(minilm.tokenizer(), ChunkSettings(max_tokens=64, overlap_tokens=0)).chunk(doc)
    assert {c.page for c in chunks} == {1, 2, 3, 4, 5}
    for chunk in chunks:
        first_line = chunk.text.split("\n")[0].lstrip("# ")  # a heading is on its page as plain text
        assert squash(first_line)[:40] in pages[chunk.page - 1]
        last_line = chunk.text.rstrip().split("\n")[-1].lstrip("# ")
        assert squash(last_line)[-40:] in pages[chunk.last_page - 1]
        assert chunk.page <= chunk.last_page


# --- headings and chunks -------------------------------------------------------------------------


def test_markdown_headings_skip_code_fences_and_read_setext_headings():
    text = "Guide\n=====\n\n```sh\n# not a heading\n```\n\n## Keys `allow_root` ##\n\nUsage\n-----\ntext"
    headings = markdown_headings(text)
    assert [(h.level, h.title) for h in headings] == [(1, "Guide"), (2, "Keys allow_root"), (2, "Usage")]
    assert [text[h.offset : h.offset + 5] for h in headings] == ["Guide", "## Ke", "Usage"]
    assert heading_path_at(headings, len(text)) == ("Guide", "Usage")
    assert heading_path_at(headings, 0) == ("Guide",)


@pytest.mark.parametrize("max_tokens", [48, 64, 128, 256])
def test_a_definitions_heading_lands_in_the_chunk_of_its_text(minilm, max_tokens):  # noqa: F811
    doc = manual("tidelog-installation.html")
    chunker = Chunker(minilm.tokenizer(), ChunkSettings(max_tokens=max_tokens, overlap_tokens=0))
    chunks = chunker.chunk(doc)
    answer = next(c for c in chunks if "Only members of the plugdev group" in c.text)
    full = ("2 Installation", "2.3 udev rules", "2.3.1 plugdev")
    # the innermost headings always; outer ones as far as a third of the chunk holds them
    assert answer.heading_path == full[len(full) - len(answer.heading_path) :]
    assert len(answer.heading_path) >= 2
    if max_tokens >= 128:  # from 128 tokens on, the heading line and its whole paragraph fit together
        assert "#### 2.3.1 plugdev\n\nThe rule gives" in answer.text
    for chunk in chunks:  # no chunk ends on a heading whose text went to the next chunk
        assert not chunk.text.rstrip().split("\n")[-1].startswith("#")
        assert doc.text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.n_tokens == chunker.count_tokens(chunk.embedding_text) <= max_tokens


def test_the_heading_path_is_embedded_with_the_chunk(minilm):  # noqa: F811
    doc = manual("tidelog-configuration.html")
    chunks = Chunker(minilm.tokenizer(), ChunkSettings(max_tokens=64, overlap_tokens=0)).chunk(doc)
    chunk = next(c for c in chunks if "Values below 20 are rounded up" in c.text)
    assert chunk.section == "3 Configuration › 3.2 Sampling keys"
    assert chunk.embedding_text == f"3 Configuration › 3.2 Sampling keys\n\n{chunk.text}"
    assert chunk.source == "tidelog-configuration.html › 3 Configuration › 3.2 Sampling keys"


def test_plain_text_chunks_have_no_heading_path(minilm):  # noqa: F811
    doc = parse_file("notes.txt", b"# Not markdown\n\nA .txt file is cut as plain text.")
    (chunk,) = Chunker(minilm.tokenizer(), ChunkSettings()).chunk(doc)
    assert (chunk.heading_path, chunk.page, chunk.embedding_text) == ((), 0, chunk.text)


def test_source_label_names_document_section_and_pages():
    assert source_label("a.pdf", ("Errors", "E205"), 3, 3) == "a.pdf › Errors › E205 › p. 3"
    assert source_label("a.pdf", ("Errors",), 3, 4) == "a.pdf › Errors › pp. 3–4"
    assert source_label("notes.md", ()) == "notes.md"


def test_preview_shows_each_boundary_with_its_heading_path(minilm):  # noqa: F811
    doc = manual("tidelog-api-reference.pdf")
    chunker = Chunker(minilm.tokenizer(), ChunkSettings(max_tokens=64, overlap_tokens=0))
    preview = preview_chunks(doc, chunker)
    rows = preview.rows()
    assert list(rows[0]) == ["chunk", "section", "page", "tokens", "chars", "overlap chars", "text"]
    assert [r["section"] for r in rows] == [c.section for c in preview.chunks]
    assert any(r["section"] == "HTTP API reference › Webhooks" for r in rows)
    html = chunks_html(doc.text, preview.chunks)
    badge = re.search(r"#(\d+) · \d+ tok · HTTP API reference › Webhooks · p\. (\d)", html)
    assert badge is not None
    webhook = preview.chunks[int(badge.group(1))]
    assert webhook.section.endswith("Webhooks") and str(webhook.page) == badge.group(2)


# --- stored and retrieved ------------------------------------------------------------------------


def test_hits_carry_heading_path_and_page_from_the_store(minilm, tmp_path):  # noqa: F811
    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    settings = IndexSettings(collection=f"structure-{tmp_path.name[-20:]}", chunk=ChunkSettings(64, 0))
    index = DocumentIndex(client, minilm, settings, sparse_dir=tmp_path)
    try:
        doc = manual("tidelog-troubleshooting.pdf")
        index.add_documents([doc])
        stored = index.document_chunks(doc.content_hash)
        assert stored == index.chunker.chunk(doc)  # heading path and pages survive the store
        hit = next(h for h in index.search("E310 CLOCK_SKEW", k=10).hits if "chronyc" in h.text)
        chunk = next(c for c in stored if c.index == hit.chunk_index)
        assert (hit.heading_path, hit.page, hit.last_page) == (
            chunk.heading_path,
            chunk.page,
            chunk.last_page,
        )
        assert (
            hit.source == "tidelog-troubleshooting.pdf › Troubleshooting guide › Time errors › E310 "
            f"CLOCK_SKEW › p. {chunk.page}"
        )
    finally:
        index.delete_collection(settings.collection)
