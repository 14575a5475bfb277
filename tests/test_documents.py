"""Document parsing and chunking: every supported format, every rejection with its exact message,
one bad file in a batch losing nothing else, and chunks that point exactly into their document."""

from __future__ import annotations

import io
import re
import tomllib
import zipfile
from pathlib import Path

import pytest

from core.errors import InputError, SettingsError
from core.retrieval.chunking import Chunk, Chunker, ChunkSettings, preview_chunks
from core.retrieval.documents import content_hash, parse_file, parse_files, parse_text
from core.retrieval.limits import ParseSettings
from core.views.search import OVERLAP_COLOUR, chunks_html
from tests.fixtures_search import corpus_files, minilm  # noqa: F401  (fixture)


def make_pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF whose text layer holds `lines` (Helvetica, one line each)."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        "/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


# --- formats --------------------------------------------------------------------------------------


def test_txt_is_decoded_with_bom_removed_and_newlines_normalised():
    doc = parse_file("notes.txt", "\ufeffFirst line\r\nSecond line\r\n\r\n".encode())
    assert (doc.name, doc.kind, doc.text) == ("notes.txt", "txt", "First line\nSecond line")
    assert doc.content_hash == content_hash("First line\nSecond line")
    assert doc.n_chars == len(doc.text)


def test_markdown_keeps_its_markup():
    doc = parse_file("README.md", b"# Title\n\nSome *text* here.\n")
    assert (doc.kind, doc.text) == ("md", "# Title\n\nSome *text* here.")


def test_pdf_text_layer_is_extracted():
    doc = parse_file("paper.pdf", make_pdf(["Vectors live in the residual stream.", "Second line."]))
    assert doc.kind == "pdf"
    assert "Vectors live in the residual stream." in doc.text and "Second line." in doc.text


def test_pdf_encrypted_only_with_an_owner_password_still_opens():
    doc = parse_file("open.pdf", encrypt_pdf(make_pdf(["Readable anyway."]), user_password=""))
    assert "Readable anyway." in doc.text


def test_docx_paragraphs_and_tables_are_extracted():
    data = make_docx(["Heading words", "A paragraph about embeddings."], table=[["cell a", "cell b"]])
    doc = parse_file("report.docx", data)
    assert doc.kind == "docx"
    # Paragraphs become Markdown paragraphs, the table a Markdown table (its first row the header).
    assert doc.text == "Heading words\n\nA paragraph about embeddings.\n\n| cell a | cell b |\n| --- | --- |"


def test_html_drops_scripts_styles_and_head_and_decodes_entities():
    html = (
        b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
        b"<h1>Caf&eacute; notes</h1><script>alert('x')</script><p>Cosine &amp; dot.</p></body></html>"
    )
    doc = parse_file("page.html", html)
    assert doc.kind == "html"
    assert doc.text == "# Café notes\n\nCosine & dot."  # the heading stays a heading


def test_pasted_text_gets_a_stable_name_from_its_hash():
    doc = parse_text("  Pasted words.  ")
    assert doc.text == "Pasted words."
    assert doc.name == f"pasted-{content_hash('Pasted words.')[:8]}"
    assert doc.kind == "pasted"
    assert parse_text("x y", name="mine.txt").name == "mine.txt"


def test_same_text_in_different_files_has_the_same_hash():
    a = parse_file("a.txt", b"Same words.\n")
    b = parse_file("b.md", b"Same words.")
    assert a.content_hash == b.content_hash
    assert a.content_hash != parse_file("c.txt", b"Other words.").content_hash


# --- rejections -----------------------------------------------------------------------------------


NOT_PLAIN = (
    "is not a plain file name (it contains a path separator or '..'); "
    "upload the file itself under a simple name."
)
SUPPORTED = "upload one of: .txt, .md, .markdown, .pdf, .docx, .html, .htm."


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.txt", b"", "'empty.txt' is empty (0 bytes); there is nothing to index."),
        ("blank.txt", b"  \n\t\n", "'blank.txt' holds only whitespace; there is nothing to index."),
        ("blank.md", b"\r\n \r\n", "'blank.md' holds only whitespace; there is nothing to index."),
        ("blank.html", b"<html><body> <p> </p></body></html>", "'blank.html' contains no text to index."),
        (
            "photo.txt",
            b"\x89PNG\r\n\x1a\n\x00\x00\rIHDR",
            "'photo.txt' looks like a binary file (it contains NUL bytes)",
        ),
        (
            "ctrl.txt",
            b"\x01\x02\x03\x04\x05\x06abc",
            "'ctrl.txt' looks like a binary file (67% control characters)",
        ),
        (
            "latin1.txt",
            "caf\xe9".encode("latin-1"),
            "'latin1.txt' is not valid UTF-8 (byte 0xe9 at position 3); save it as UTF-8 and upload it",
        ),
        ("prog.exe", b"MZ", f"'prog.exe' has an unsupported type (.exe); {SUPPORTED}"),
        ("Makefile", b"all:", f"'Makefile' has an unsupported type (no extension); {SUPPORTED}"),
        (
            "bad.pdf",
            b"not a pdf at all",
            "'bad.pdf' could not be read as a PDF (Stream has ended unexpectedly); the file may be damaged.",
        ),
        (
            "image.html",
            b"<p>\x00\x00</p>",
            "'image.html' looks like a binary file (it contains NUL bytes), not HTML.",
        ),
        ("../../etc/passwd.txt", b"x", f"'../../etc/passwd.txt' {NOT_PLAIN}"),
        ("dir/notes.txt", b"x", f"'dir/notes.txt' {NOT_PLAIN}"),
        ("..\\win.txt", b"x", f"'..\\\\win.txt' {NOT_PLAIN}"),
        ("..", b"x", f"'..' {NOT_PLAIN}"),
        ("tab\tname.txt", b"x", "'tab\\tname.txt' has control characters in its name; rename the file"),
        ("nul\x00.txt", b"x", "'nul\\x00.txt' has control characters in its name; rename the file"),
        ("", b"x", "An upload has no file name; give the file a name and upload it again."),
    ],
)
def test_bad_uploads_are_rejected_with_a_message_naming_the_file(name, data, message):
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file(name, data)


def test_file_over_the_size_cap_is_rejected_before_parsing():
    settings = ParseSettings(max_bytes=1024 * 1024)
    with pytest.raises(
        InputError, match=re.escape("'big.txt' is 1.5 MB; the limit is 1.0 MB. Split it into smaller files.")
    ):
        parse_file("big.txt", b"a" * (1024 * 1024 * 3 // 2), settings)
    assert parse_file("ok.txt", b"a" * 1024 * 1024, settings).n_chars == 1024 * 1024


def test_default_size_cap_is_ten_megabytes():
    with pytest.raises(InputError, match=re.escape("'huge.md' is 10.0 MB; the limit is 10.0 MB.")):
        parse_file("huge.md", b"a" * (10 * 1024 * 1024 + 1))


def test_password_protected_pdf_is_rejected():
    data = encrypt_pdf(make_pdf(["Secret."]), user_password="secret")
    message = "'locked.pdf' is encrypted (password-protected); save an unprotected copy and upload that."
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file("locked.pdf", data)


def test_truncated_pdf_is_rejected():
    data = make_pdf(["Some text."])
    with pytest.raises(InputError, match=re.escape("'cut.pdf' could not be read as a PDF (")):
        parse_file("cut.pdf", data[: len(data) // 2])


def test_pdf_without_a_text_layer_is_rejected():
    message = "'scan.pdf' contains no text to index (a scanned PDF holds only images)."
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file("scan.pdf", make_pdf([]))
    with pytest.raises(InputError, match=re.escape("'empty.docx' contains no text to index.") + "$"):
        parse_file("empty.docx", make_docx(["", "   "]))


def test_file_that_is_not_a_docx_is_rejected():
    message = "'old.docx' could not be read as a Word .docx file ("
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file("old.docx", b"\xd0\xcf\x11\xe0 an old binary .doc")


def test_empty_or_oversized_pasted_text_is_rejected():
    with pytest.raises(
        InputError, match=re.escape("The pasted text is empty; paste or type something first.")
    ):
        parse_text(" \n ")
    with pytest.raises(
        InputError, match=re.escape("The pasted text is 2.0 MB; the limit is 1.0 MB. Paste less at once.")
    ):
        parse_text("é" * (1024 * 1024), settings=ParseSettings(max_bytes=1024 * 1024))


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-8"])
def test_text_with_a_byte_order_mark_is_decoded(encoding):
    text = "Café ☕ 東京 🐝 first line\r\nsecond line\r\n"
    doc = parse_file("notes.txt", ("\ufeff" + text).encode(encoding))
    assert doc.text == "Café ☕ 東京 🐝 first line\nsecond line"
    assert doc.content_hash == parse_file("same.txt", text.encode("utf-8")).content_hash
    page = parse_file("page.html", ("\ufeff<p>Café ☕ 東京 🐝</p>").encode(encoding))
    assert page.text == "Café ☕ 東京 🐝"


def test_text_with_a_utf16_mark_that_is_not_utf16_is_rejected():
    cut = b"\xff\xfe" + "ab".encode("utf-16-le") + b"\x00\xd8"  # ends inside a surrogate pair
    message = "'cut.txt' is not valid UTF-16 (byte 0x00 at position 6); save it as UTF-8 and upload it again."
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file("cut.txt", cut)
    with pytest.raises(
        InputError, match=re.escape("'nul.txt' looks like a binary file (it contains NUL characters)")
    ):
        parse_file("nul.txt", "\ufeffa\x00b".encode("utf-16-le"))


def test_one_bad_file_loses_nothing_else():
    files = [
        ("good.txt", b"Good words."),
        ("empty.txt", b""),
        ("../escape.txt", b"Sneaky."),
        ("also good.md", b"# More"),
        ("binary.txt", b"\x00\x01"),
    ]
    report = parse_files(files)
    assert [d.name for d in report.documents] == ["good.txt", "also good.md"]
    assert [e.name for e in report.errors] == ["empty.txt", "../escape.txt", "binary.txt"]
    assert report.errors[0].message == "'empty.txt' is empty (0 bytes); there is nothing to index."


def test_parse_settings_validate_with_a_fix():
    with pytest.raises(
        SettingsError, match=re.escape("max_bytes must be positive, got 0; the default is 10.0 MB.")
    ):
        ParseSettings(max_bytes=0)
    with pytest.raises(
        SettingsError, match=re.escape("max_unpacked_bytes must be positive, got 0; the default is 40.0 MB.")
    ):
        ParseSettings(max_unpacked_bytes=0)
    with pytest.raises(
        SettingsError, match=re.escape("max_chars must be positive, got -1; the default is 10,485,760.")
    ):
        ParseSettings(max_chars=-1)
    with pytest.raises(
        SettingsError, match=re.escape("max_compression_ratio must be at least 1, got 0.5; try 100.")
    ):
        ParseSettings(max_compression_ratio=0.5)
    with pytest.raises(SettingsError, match=re.escape("max_control_ratio must be between 0 and 1, got 2")):
        ParseSettings(max_control_ratio=2)


# --- limits: the upload cap, zip bombs, text length ----------------------------------------------

MB = 1024 * 1024
CONFIG = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"


def test_the_upload_cap_is_defined_once_and_streamlit_says_the_same():
    from core.retrieval.limits import MAX_UPLOAD_MB

    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB  # Streamlit's MB are MiB, as ours
    assert ParseSettings().max_bytes == MAX_UPLOAD_MB * MB
    limit = f"the limit is {MAX_UPLOAD_MB:.1f} MB"
    with pytest.raises(InputError, match=re.escape(limit)):
        parse_file("over.txt", b"a" * (MAX_UPLOAD_MB * MB + 1))


def docx_with_member(member: str, size_mb: int, declared: int | None = None) -> bytes:
    """A real .docx plus `member`: `size_mb` MB of spaces, deflated about 1000:1. With `declared`, the
    zip directory announces that size instead (the data stays as written), as a crafted file would."""
    base = zipfile.ZipFile(io.BytesIO(make_docx(["A real paragraph."])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in base.infolist():
            archive.writestr(info, base.read(info))
        with archive.open(member, "w") as stream:
            for _ in range(size_mb):
                stream.write(b" " * MB)
        if declared is not None:
            archive.infolist()[-1].file_size = declared
    return out.getvalue()


def directory(data: bytes) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.infolist()


def size_text(n_bytes: int) -> str:
    return f"{n_bytes / MB:,.1f} MB" if n_bytes >= MB else f"{n_bytes / 1024:,.0f} KB"


def forbid_unpacking(monkeypatch) -> None:
    """From now on, reading any zip member fails the test: a refusal must come from the directory."""

    def refuse(*args, **kwargs):
        raise AssertionError("a zip member was unpacked")

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)


def test_a_docx_declaring_a_gigabyte_is_refused_unread(monkeypatch):
    data = docx_with_member("word/media/image1.png", 1, declared=1_150_000_000)  # as reported: 1.15 GB
    total = sum(m.file_size for m in directory(data))
    assert len(data) < 64 * 1024 and total > 1_150_000_000
    message = (
        f"'bomb.docx' would unpack to {size_text(total)} (it is a zip archive of {size_text(len(data))}); "
        "the limit is 40.0 MB. It was not unpacked."
    )
    forbid_unpacking(monkeypatch)
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file("bomb.docx", data)


def test_a_docx_member_packed_like_a_zip_bomb_is_refused_unread(monkeypatch):
    data = docx_with_member("word/media/padding.bin", 8)  # 8 MB of spaces: under the 40 MB total
    member = directory(data)[-1]
    ratio = member.file_size / member.compress_size
    assert ratio > 500
    packed = size_text(member.compress_size)
    message = (
        f"'bomb.docx' holds 'word/media/padding.bin', packed {ratio:,.0f}:1 ({packed} unpacking to 8.0 MB); "
        "more than 100:1 is refused as a likely zip bomb. It was not unpacked."
    )
    forbid_unpacking(monkeypatch)
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file("bomb.docx", data)


def test_what_a_docx_unpacks_to_is_capped():
    data = make_docx(["A real paragraph."])
    total = sum(m.file_size for m in directory(data))
    settings = ParseSettings(max_unpacked_bytes=total - 1)
    message = (
        f"'report.docx' would unpack to {size_text(total)} (it is a zip archive of {size_text(len(data))}); "
        f"the limit is {size_text(total - 1)}. It was not unpacked."
    )
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file("report.docx", data, settings)
    just_enough = ParseSettings(max_unpacked_bytes=total)
    assert parse_file("report.docx", data, just_enough).text == "A real paragraph."


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("long.txt", lambda text: text.encode()),
        ("long.docx", lambda text: make_docx([text[:30], text[30:]])),
        ("long.pdf", lambda text: make_pdf([text[:30], text[30:]])),
        ("long.html", lambda text: f"<p>{text}</p>".encode()),
    ],
)
def test_the_text_one_upload_may_add_is_capped(name, make):
    text = "".join(chr(ord("a") + i % 26) for i in range(60))
    message = (
        f"'{name}' holds more than 50 characters of text, the most one upload may add; "
        "split it into smaller files."
    )
    with pytest.raises(InputError, match=re.escape(message)):
        parse_file(name, make(text), ParseSettings(max_chars=50))
    # 60 characters of text, plus at most a blank line between a .docx's two paragraphs
    assert parse_file(name, make(text), ParseSettings(max_chars=62)).n_chars <= 62


# --- chunking -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_doc():
    sentences = [f"Sentence number {i} talks about vectors, tokens and attention heads." for i in range(60)]
    return parse_text(" ".join(sentences), name="long.txt")


def test_chunks_point_exactly_into_the_document_and_respect_the_token_limit(minilm, long_doc):  # noqa: F811
    settings = ChunkSettings(max_tokens=64, overlap_tokens=0)
    chunker = Chunker(minilm.tokenizer(), settings)
    chunks = chunker.chunk(long_doc)
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert long_doc.text[chunk.char_start : chunk.char_end] == chunk.text
        assert chunk.n_tokens == chunker.count_tokens(chunk.text) <= 64
        assert (chunk.doc_name, chunk.doc_hash) == ("long.txt", long_doc.content_hash)
    # Without overlap the chunks tile the text: only whitespace lies between neighbours.
    for prev, cur in zip(chunks, chunks[1:], strict=False):
        assert prev.char_end <= cur.char_start
        assert long_doc.text[prev.char_end : cur.char_start].strip() == ""
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(long_doc.text)


def test_overlap_repeats_text_between_neighbouring_chunks(minilm, long_doc):  # noqa: F811
    chunker = Chunker(minilm.tokenizer(), ChunkSettings(max_tokens=64, overlap_tokens=24))
    chunks = chunker.chunk(long_doc)
    overlaps = [prev.char_end - cur.char_start for prev, cur in zip(chunks, chunks[1:], strict=False)]
    assert all(o > 0 for o in overlaps)
    assert all(c.n_tokens <= 64 for c in chunks)


def test_short_document_is_one_chunk_and_markdown_splits_at_headings(minilm):  # noqa: F811
    chunker = Chunker(minilm.tokenizer(), ChunkSettings(max_tokens=32, overlap_tokens=0))
    short = parse_text("Just one sentence.")
    assert [(c.char_start, c.char_end, c.text) for c in chunker.chunk(short)] == [
        (0, 18, "Just one sentence.")
    ]
    alpha = "# Alpha\n\nThe first section talks about tokens and how text is split into them."
    beta = "# Beta\n\nThe second section talks about vectors. It has two sentences."
    md = parse_file("guide.md", f"{alpha}\n\n{beta}".encode())
    assert chunker.count_tokens(md.text) > 32  # too long for one chunk, so it is cut at the heading
    assert [c.text for c in chunker.chunk(md)] == [alpha, beta]


def test_the_encoders_tokenizer_is_not_modified_by_chunking(minilm):  # noqa: F811
    before = minilm.model.tokenizer("word " * 400, truncation=True)["input_ids"]
    Chunker(minilm.tokenizer(), ChunkSettings()).chunk(parse_text("word " * 400))
    assert minilm.model.tokenizer("word " * 400, truncation=True)["input_ids"] == before
    assert len(minilm.tokenizer().encode("word " * 400).ids) == 402  # the copy never truncates


def test_preview_summarises_the_chunks(minilm):  # noqa: F811
    name, data = corpus_files()[0]
    doc = parse_file(name, data)
    chunker = Chunker(minilm.tokenizer(), ChunkSettings(max_tokens=48, overlap_tokens=8))
    preview = preview_chunks(doc, chunker, max_rows=2)
    chunks = chunker.chunk(doc)
    assert preview.n_chunks == len(chunks) > 2
    assert preview.total_tokens == sum(c.n_tokens for c in chunks)
    assert preview.max_chunk_tokens == max(c.n_tokens for c in chunks) <= 48
    assert preview.chunks == chunks[:2]
    rows = preview.rows()
    assert [r["chunk"] for r in rows] == [0, 1]
    assert rows[0]["overlap chars"] == 0
    assert rows[1]["overlap chars"] == max(0, chunks[0].char_end - chunks[1].char_start)
    assert set(rows[0]) == {"chunk", "section", "tokens", "chars", "overlap chars", "text"}


def test_chunk_settings_validate_with_a_fix():
    with pytest.raises(
        SettingsError, match=re.escape("max_tokens must be between 8 and 512, got 4; try 128.")
    ):
        ChunkSettings(max_tokens=4)
    with pytest.raises(
        SettingsError,
        match=re.escape("overlap_tokens must be at least 0 and smaller than max_tokens (64), got 64; try 8."),
    ):
        ChunkSettings(max_tokens=64, overlap_tokens=64)


def test_chunk_boundaries_html_shades_chunks_marks_overlap_and_escapes():
    text = "<b>one</b> two three four"
    chunks = [
        Chunk("d", "h", 0, 0, 14, text[0:14], 5),  # "<b>one</b> two"
        Chunk("d", "h", 1, 11, 26, text[11:26], 4),  # "two three four", sharing "two"
    ]
    out = chunks_html(text, chunks)
    assert "<b>" not in out and "&lt;b&gt;one&lt;/b&gt;" in out
    assert out.count("tok</span>") == 2 and "#0 · 5 tok" in out and "#1 · 4 tok" in out
    assert f'<span style="background: {OVERLAP_COLOUR};">two</span>' in out
    assert out.index("#1 · 4 tok") < out.index(">two</span>")  # the badge sits where chunk 1 starts
    assert chunks_html(text, chunks, max_chars=5).endswith(" …</div>")
