"""Text out of each kind of upload: plain text (UTF-8, or UTF-16/32 by byte-order mark, refusing
binary), PDF, Word .docx (its zip directory checked before anything is unpacked) and HTML. Each
raises `InputError` naming the file and saying what to do."""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
import zipfile

from core.errors import InputError
from core.retrieval.limits import MB, ParseSettings, check_chars, mb

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


def pdf_text(name: str, data: bytes, settings: ParseSettings) -> str:
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
            pages.append(page.extract_text() or "")
            n_chars += len(pages[-1])
            check_chars(name, n_chars, settings)
    except InputError:
        raise
    except Exception as e:  # pypdf raises many types for broken files; all mean "cannot read"
        raise InputError(
            f"'{name}' could not be read as a PDF ({_reason(e)}); the file may be damaged."
        ) from e
    return "\n\n".join(page.strip() for page in pages if page.strip())


def docx_text(name: str, data: bytes, settings: ParseSettings) -> str:
    import docx

    _check_zip(name, data, settings)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as e:  # not a zip, or a zip without word/document.xml
        raise InputError(
            f"'{name}' could not be read as a Word .docx file ({_reason(e)}); "
            "old .doc files must be saved as .docx first."
        ) from e
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append("\t".join(cell.text for cell in row.cells))
    return "\n".join(parts)


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


def html_text(name: str, data: bytes) -> str:
    from bs4 import BeautifulSoup

    if _encoding(data)[0] == "utf-8" and b"\x00" in data:  # UTF-16/32 text is full of NUL bytes
        raise InputError(f"'{name}' looks like a binary file (it contains NUL bytes), not HTML.")
    soup = BeautifulSoup(data, "html.parser")  # bytes in: bs4 detects the encoding itself (BOMs too)
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    lines = [line.strip() for line in soup.get_text(separator="\n").splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


def _reason(error: Exception) -> str:
    message = str(error).strip() or type(error).__name__
    return message if len(message) <= 120 else message[:117] + "..."
