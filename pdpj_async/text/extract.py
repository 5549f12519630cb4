"""Local extraction: PDF page by page (pypdfium2, OCR optional), HTML (selectolax), plain text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium  # type: ignore[import-untyped]
from selectolax.lexbor import LexborHTMLParser

from . import ocr
from .normalize import nfc

# Below this many non-blank characters a PDF page counts as having no text layer.
MIN_PAGE_CHARS = 16
_BLOCKS = (
    "p, div, br, li, tr, h1, h2, h3, h4, h5, h6, section, article, blockquote, pre, "
    "table, ul, ol, dd, dt, header, footer, hr"
)
_SPACES = re.compile(r"[ \t\u00a0\f\v]+")


class ExtractionError(Exception):
    """The file cannot be read as the type it claims (corrupt, encrypted, not that format)."""


@dataclass(slots=True)
class Extracted:
    """A document's text and where it came from."""

    text: str
    source: str  # 'pdf', 'html', 'plain' or 'ocr'
    pages_without_text: int = 0


def kind_of(mime: str | None, name: str) -> str | None:
    """'pdf', 'html', 'plain' or None (a type we do not extract) from the MIME type or name."""
    mime = (mime or "").split(";")[0].strip().lower()
    lower = name.lower()
    if mime == "application/pdf" or lower.endswith(".pdf"):
        return "pdf"
    if mime in {"text/html", "application/xhtml+xml"} or lower.endswith((".html", ".htm")):
        return "html"
    if mime == "text/plain" or lower.endswith(".txt"):
        return "plain"
    return None


def pdf_pages(path: Path, use_ocr: bool) -> Iterator[tuple[str, bool]]:
    """(text, had a text layer) per page, one page in memory at a time."""
    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        raise ExtractionError(f"not a readable PDF: {exc}") from None
    try:
        for index in range(len(pdf)):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                text = textpage.get_text_range()
                textpage.close()
                if len(text.strip()) >= MIN_PAGE_CHARS:
                    yield text, True
                elif use_ocr:
                    yield ocr.page_text(page), False
                else:
                    yield text, False
            finally:
                page.close()
    finally:
        pdf.close()


def pdf(path: Path, use_ocr: bool) -> Extracted:
    """The text of a PDF, pages separated by a form feed line."""
    parts: list[str] = []
    without = 0
    for text, layered in pdf_pages(path, use_ocr):
        without += not layered
        parts.append(nfc(text).strip())
    source = "ocr" if use_ocr and without else "pdf"
    return Extracted("\n\n".join(p for p in parts if p), source, without)


def html(data: bytes) -> Extracted:
    """The visible text of an HTML document, one paragraph per block element."""
    tree = LexborHTMLParser(data.decode("utf-8", errors="replace"))
    for node in tree.css("script, style, noscript, template, head"):
        node.decompose()
    root = tree.body or tree.root
    if root is None:
        return Extracted("", "html")
    for node in root.css(_BLOCKS):
        node.insert_before("\n\n")
        node.insert_after("\n\n")
    return Extracted(_paragraphs(root.text(deep=True, separator="")), "html")


def plain(data: bytes) -> Extracted:
    """A text file, decoded as UTF-8 (Latin-1 when it is not)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return Extracted(nfc(text).strip(), "plain")


def _paragraphs(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in nfc(text).split("\n")]
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)
