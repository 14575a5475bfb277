"""Text out of each kind of upload, keeping its structure as Markdown: plain text (UTF-8, or UTF-16/32 by
byte-order mark, refusing binary), PDF (page by page, outline entries as headings), Word .docx (its zip
directory checked before anything is unpacked; mammoth maps its styles to HTML) and HTML (navigation
and boilerplate dropped, then markdownify). Each raises `InputError` naming the file and what to do."""

from __future__ import annotations

import codecs
import io
import logging
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Any

from core.errors import InputError
from core.retrieval.limits import MB, ParseSettings, check_chars, mb

log = logging.getLogger(__name__)

_TEXT_CONTROL_OK = {"\t", "\n", "\r", "\f", "\v"}
# Byte-order marks and their codecs, longest first: UTF-32 LE's mark begins with UTF-16 LE's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)

_RATIO_FLOOR_BYTES = 4 * MB  # zip members smaller than this unpacked are never refused for their ratio


def decode_text(name: str, data: bytes, settings: ParseSettings) -> str:
    """UTF-8, or UTF-16/UTF-32 when the file starts with their byte-order mark."""
    codec, label = _encoding(data)
    if codec == "utf-8" and b"\x00" in data:
        raise InputError(f"'{name}' looks like a binary file (it contains NUL bytes), not text.")
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        raise InputError(
            f"'{name}' is not valid {label} (byte 0x{data[e.start]:02x} at position {e.start}); "
            "save it as UTF-8 and upload it again."
        ) from e
    if "\x00" in text:
        raise InputError(f"'{name}' looks like a binary file (it contains NUL characters), not text.")
    control = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in _TEXT_CONTROL_OK)
    if text and control / len(text) > settings.max_control_ratio:
        raise InputError(
            f"'{name}' looks like a binary file ({control / len(text):.0%} control characters), not text."
        )
    return text


@dataclass(frozen=True)
class PdfText:
    """A PDF's text, its pages joined by blank lines, with where each page starts."""

    text: str  # Markdown: outline (bookmark) entries found on their page become headings
    page_starts: tuple[int, ...]  # character offset in `text` where page i + 1 begins (pages with text)
    page_numbers: tuple[int, ...]  # the 1-based page number of each entry of `page_starts`


def pdf_text(name: str, data: bytes, settings: ParseSettings) -> PdfText:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:  # many PDFs are "encrypted" with an empty user password and open fine
                opened = bool(reader.decrypt(""))
            except Exception:
                opened = False
            if not opened:
                raise InputError(
                    f"'{name}' is encrypted (password-protected); save an unprotected copy and upload that."
                )
        pages, n_chars = [], 0
        for page in reader.pages:  # stop as soon as the text is too long to be indexed anyway
            pages.append(_normalize_newlines(page.extract_text() or "").strip())
            n_chars += len(pages[-1])
            check_chars(name, n_chars, settings)
        headings = _pdf_outline(reader)
    except InputError:
        raise
    except Exception as e:  # pypdf raises many types for broken files; all mean "cannot read"
        raise InputError(
            f"'{name}' could not be read as a PDF ({_reason(e)}); the file may be damaged."
        ) from e
    pages = _drop_running_lines(pages)
    for page_index, level, title in headings:
        if 0 <= page_index < len(pages):
            pages[page_index] = _mark_heading(pages[page_index], level, title)
    pages = [_reflow(page) for page in pages]
    text, starts, numbers = "", [], []
    for number, page in enumerate(pages, start=1):
        if not page:
            continue
        if text:
            text += "\n\n"
        starts.append(len(text))
        numbers.append(number)
        text += page
    return PdfText(text=text, page_starts=tuple(starts), page_numbers=tuple(numbers))


def _pdf_outline(reader: Any) -> list[tuple[int, int, str]]:
    """(0-based page, level from 1, title) of every outline entry, in outline order."""
    found: list[tuple[int, int, str]] = []

    def walk(entries: list[Any], level: int) -> None:
        for entry in entries:
            if isinstance(entry, list):
                walk(entry, level + 1)
                continue
            try:
                page = reader.get_destination_page_number(entry)
            except Exception:  # an entry pointing nowhere (or to a named action) has no page
                continue
            title = " ".join(str(getattr(entry, "title", "") or "").split())
            if title and page is not None:
                found.append((int(page), min(level, 6), title))

    walk(list(reader.outline or []), 1)
    return found


def _drop_running_lines(pages: list[str]) -> list[str]:
    """Pages without their running header and footer: a line that recurs, digits aside, as the first
    or last line of most pages ("Guide - page 3")."""
    if len(pages) < 3:
        return pages
    counts: dict[str, int] = {}
    for page in pages:
        lines = page.split("\n")
        for line in {lines[0], lines[-1]}:
            counts[_digits_aside(line)] = counts.get(_digits_aside(line), 0) + 1
    running = {line for line, n in counts.items() if line.strip() and n >= 2 * len(pages) / 3}
    kept = []
    for page in pages:
        lines = page.split("\n")
        while lines and _digits_aside(lines[0]) in running:
            lines.pop(0)
        while lines and _digits_aside(lines[-1]) in running:
            lines.pop()
        kept.append("\n".join(lines).strip())
    return kept


def _digits_aside(line: str) -> str:
    return re.sub(r"\d+", "#", " ".join(line.split()))


def _reflow(page: str) -> str:
    """Lines wrapped by the PDF's layout joined back into paragraphs: a line break stays a paragraph
    break after a heading, before one, and after a line that ends a sentence well short of the width."""
    lines = [line.strip() for line in page.split("\n")]
    width = max((len(line) for line in lines), default=0)
    out = ""
    for i, line in enumerate(lines):
        if i == 0:
            out = line
            continue
        previous = lines[i - 1]
        ends_paragraph = previous.endswith((".", ":", "!", "?")) and len(previous) < 0.85 * width
        if previous.startswith("#") or line.startswith("#") or ends_paragraph or not previous or not line:
            out += "\n\n" + line
        else:
            out += " " + line
    return re.sub(r"\n{3,}", "\n\n", out).strip()


def _mark_heading(page: str, level: int, title: str) -> str:
    """`page` with the first line that reads `title` (spacing aside) made a Markdown heading."""
    wanted = " ".join(title.split())
    lines = page.split("\n")
    for i, line in enumerate(lines):
        if " ".join(line.split()) == wanted:
            lines[i] = "#" * level + " " + wanted
            return "\n".join(lines)
    return page  # the title is not on its page as a line of its own: no heading is invented


# Word paragraph styles that hold code; mammoth maps the built-in headings, lists and tables itself.
_CODE_STYLES = ("Code", "Source Code", "HTML Preformatted")
_DOCX_STYLE_MAP = "\n".join(f"p[style-name='{style}'] => pre:separator('\\n')" for style in _CODE_STYLES)


def docx_text(name: str, data: bytes, settings: ParseSettings) -> str:
    """Markdown of a .docx: headings, lists, tables and code paragraphs kept; images left out."""
    import mammoth

    _check_zip(name, data, settings)
    no_images = mammoth.images.img_element(lambda image: {})  # never reads the image bytes
    try:
        result = mammoth.convert_to_html(io.BytesIO(data), style_map=_DOCX_STYLE_MAP, convert_image=no_images)
    except Exception as e:  # not a zip, or a zip without word/document.xml
        raise InputError(
            f"'{name}' could not be read as a Word .docx file ({_reason(e)}); "
            "old .doc files must be saved as .docx first."
        ) from e
    for message in result.messages:
        log.debug("%s: %s", name, message)
    return _markdown(_parse_html(result.value.encode("utf-8")))


def _check_zip(name: str, data: bytes, settings: ParseSettings) -> None:
    """Refuse a zip that would unpack to too much, reading only its directory, never a member.

    The declared sizes bound what `zipfile` will unpack: it stops at a member's declared size (and
    fails its CRC check), so a member that lies about its size cannot unpack to more."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        return  # not a readable zip: python-docx says so in its own words
    total = sum(m.file_size for m in members)
    if total > settings.max_unpacked_bytes:
        raise InputError(
            f"'{name}' would unpack to {mb(total)} (it is a zip archive of {mb(len(data))}); "
            f"the limit is {mb(settings.max_unpacked_bytes)}. It was not unpacked."
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size >= _RATIO_FLOOR_BYTES and ratio > settings.max_compression_ratio:
            raise InputError(
                f"'{name}' holds {_printable(member.filename)!r}, packed {ratio:,.0f}:1 "
                f"({mb(member.compress_size)} unpacking to {mb(member.file_size)}); more than "
                f"{settings.max_compression_ratio:,.0f}:1 is refused as a likely zip bomb. "
                "It was not unpacked."
            )


def _printable(text: str) -> str:
    """`text` with control characters written as escapes, safe to show."""
    return "".join(
        ch if unicodedata.category(ch) != "Cc" else ch.encode("unicode_escape").decode() for ch in text
    )


def _encoding(data: bytes) -> tuple[str, str]:
    """(codec, name) from the byte-order mark; UTF-8 without one."""
    return next(((codec, label) for bom, codec, label in _BOMS if data.startswith(bom)), ("utf-8", "UTF-8"))


# Elements that are navigation or page furniture, never content.
_BOILERPLATE_TAGS = ["script", "style", "noscript", "template", "head", "nav", "header", "footer", "aside"]
_BOILERPLATE_TAGS += ["form", "button", "iframe", "svg", "img", "hr"]
_BOILERPLATE_ROLES = {"navigation", "banner", "contentinfo", "search", "complementary"}
# Class names of navigation blocks: texinfo's "nav-panel" / "header" / "mini-toc", common site chrome.
_BOILERPLATE_CLASSES = {"nav-panel", "navigation", "navbar", "nav", "breadcrumb", "breadcrumbs", "mini-toc"}
_BOILERPLATE_CLASSES |= {"sidebar", "skip-link", "menu", "footer", "header", "toc", "contents"}
_BLOCKS = ("div", "p", "ul", "ol", "table", "section")
# A line that is texinfo navigation ("Next: A, Previous: B, Up: C [Contents][Index]").
_NAV_LINE = re.compile(r"^\s*(?:Next|Prev(?:ious)?|Up)\s*:", re.IGNORECASE)


def html_text(name: str, data: bytes) -> str:
    """Markdown of an HTML page: headings, paragraphs, lists, tables and code blocks kept; scripts,
    navigation (nav/header/footer, texinfo's "Next: … Up: …" panels, index links) dropped."""
    if _encoding(data)[0] == "utf-8" and b"\x00" in data:  # UTF-16/32 text is full of NUL bytes
        raise InputError(f"'{name}' looks like a binary file (it contains NUL bytes), not HTML.")
    return _markdown(_parse_html(data))


def _parse_html(data: bytes) -> Any:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")  # bytes in: bs4 detects the encoding itself (BOMs too)
    for tag in soup(_BOILERPLATE_TAGS):
        tag.decompose()
    for tag in soup.find_all(attrs={"role": True}):
        if not tag.decomposed and str(tag.get("role", "")).lower() in _BOILERPLATE_ROLES:
            tag.decompose()
    for tag in soup.find_all(_BLOCKS):
        if tag.decomposed:
            continue
        classes = {c.lower() for c in tag.get("class") or []}
        if classes & _BOILERPLATE_CLASSES or any(c.startswith("index-") for c in classes):
            tag.decompose()  # "index-cp", "index-fn": a texinfo index, links to every entry
        elif (
            tag.find("a") is not None
            and tag.find(_BLOCKS) is None  # a line of links, not a block that merely starts with one
            and _NAV_LINE.match(tag.get_text(" ", strip=True))
        ):
            tag.decompose()
    for link in soup.find_all("a", class_=["copiable-link", "index-entry-id"]):
        link.decompose()  # texinfo's "¶" permalinks and empty index anchors
    for link in soup.find_all("a", rel=True):
        if not link.decomposed and {"index", "contents", "next", "prev", "up"} & set(link.get("rel") or []):
            link.decompose()
    return soup


def _markdown(soup: Any) -> str:
    from markdownify import MarkdownConverter

    converter = MarkdownConverter(
        heading_style="ATX",
        bullets="-",
        strip=["a"],  # link text stays, addresses go: they are noise to the encoder
        escape_underscores=False,  # identifiers (allow_root, E_NO_DEVICE) must stay searchable as written
        escape_asterisks=False,
        table_infer_header=True,
    )
    text = _normalize_newlines(converter.convert_soup(soup))
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _reason(error: Exception) -> str:
    message = str(error).strip() or type(error).__name__
    return message if len(message) <= 120 else message[:117] + "..."
