"""Splitting documents into chunks that know where they came from (heading path, page, lines)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from retrieval.loaders import LoadedDocument, Page


@dataclass(frozen=True)
class TextChunk:
    """A piece of a document and its place in it.

    `location` is the heading path ("Guide > Install > Linux") for Markdown and HTML, "page N" for
    PDF, "lines A-B" for code and empty for plain text.
    """

    text: str
    location: str
    start: int
    page: int | None
    index: int


# Long texts are split a segment at a time, so that the splitters' working memory stays bounded
# whatever the file's size. Segments end at a heading (Markdown) or a blank line.
_SEGMENT_CHARS = 1 << 18
_HEADING = re.compile(r"(#{1,3})(?:[ \t]+(.*?))?[ \t]*$")
_FENCES = ("```", "~~~")


def split(doc: LoadedDocument, chunk_size: int = 1000, chunk_overlap: int = 150) -> list[TextChunk]:
    """Chunks of at most `chunk_size` characters, neighbours sharing about `chunk_overlap`."""
    return list(iter_chunks(doc, chunk_size, chunk_overlap))


def iter_chunks(doc: LoadedDocument, chunk_size: int = 1000, chunk_overlap: int = 150) -> Iterator[TextChunk]:
    """The chunks of `split`, one at a time: a long document is split a segment at a time."""
    if chunk_size < 100 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_size must be >= 100 and 0 <= chunk_overlap < chunk_size")
    return _chunks(doc, chunk_size, chunk_overlap)


def _chunks(doc: LoadedDocument, chunk_size: int, chunk_overlap: int) -> Iterator[TextChunk]:
    index = 0
    for page in doc.pages:
        for text, location, start, page_number in _page_pieces(doc, page, chunk_size, chunk_overlap):
            if text.strip():
                yield TextChunk(text.strip(), location, start, page_number, index)
                index += 1


def _page_pieces(
    doc: LoadedDocument, page: Page, chunk_size: int, chunk_overlap: int
) -> Iterator[tuple[str, str, int, int | None]]:
    if doc.kind in ("markdown", "html"):
        for base, segment, prefix in _markdown_segments(page.text):
            for piece, path, start, _ in _markdown(prefix + segment, chunk_size, chunk_overlap):
                at = base - len(prefix) + start if start >= len(prefix) else -1
                yield piece, path, at, None
    elif doc.kind == "code":
        lines_before = 0
        for base, segment in _segments(page.text):
            for piece, location, start, _ in _code(segment, doc.language, chunk_size, chunk_overlap):
                if location:
                    first, last = (int(n) + lines_before for n in location.split()[1].split("-"))
                    location = f"lines {first}-{last}"
                yield piece, location, base + start if start >= 0 else -1, None
            lines_before += segment.count("\n")
    else:
        location = f"page {page.number}" if page.number is not None else ""
        for base, segment in _segments(page.text):
            for text, start in _recursive(segment, chunk_size, chunk_overlap):
                yield text, location, base + start if start >= 0 else -1, page.number


def _segments(text: str) -> Iterator[tuple[int, str]]:
    """(offset, segment) of `text` in pieces of about _SEGMENT_CHARS, cut after blank lines."""
    start = 0
    while len(text) - start > 2 * _SEGMENT_CHARS:
        cut = text.find("\n\n", start + _SEGMENT_CHARS, start + 2 * _SEGMENT_CHARS)
        if cut < 0:
            cut = text.find("\n", start + _SEGMENT_CHARS, start + 2 * _SEGMENT_CHARS)
        end = cut + 1 if cut >= 0 else start + _SEGMENT_CHARS
        yield start, text[start:end]
        start = end
    yield start, text[start:]


def _markdown_segments(text: str) -> Iterator[tuple[int, str, str]]:
    """(offset, segment, heading prefix) of Markdown `text`: segments start at a heading outside
    a code fence when they can (else after a blank line), and the prefix repeats the headings in
    force there, so each segment's chunks get the heading path they have in the whole text."""
    headings: dict[int, str] = {}
    fence: str | None = None
    start = position = 0
    prefix = ""
    while position < len(text):
        end = text.find("\n", position)
        end = len(text) if end < 0 else end + 1
        line = text[position:end].strip()
        if fence is not None:
            fence = None if line.startswith(fence) else fence
        elif line.startswith(_FENCES):
            fence = line[:3]
        elif (match := _HEADING.fullmatch(line)) is not None:
            level = len(match.group(1))
            if position - start >= _SEGMENT_CHARS:
                yield start, text[start:position], prefix
                start, prefix = position, _heading_lines(headings)
            headings = {n: h for n, h in headings.items() if n < level}
            headings[level] = match.group(2) or ""
        elif not line and position - start >= 4 * _SEGMENT_CHARS:
            # A section longer than many segments: cut it after a blank line.
            yield start, text[start:end], prefix
            start, prefix = end, _heading_lines(headings)
        position = end
    if start < len(text):
        yield start, text[start:], prefix


def _heading_lines(headings: dict[int, str]) -> str:
    return "".join(f"{'#' * level} {title}\n" for level, title in sorted(headings.items()))


def _splitter(chunk_size: int, chunk_overlap: int, language: str | None = None) -> Any:
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    if language:
        try:
            return RecursiveCharacterTextSplitter.from_language(
                Language(language), chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True
            )
        except ValueError:
            pass
    return RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True
    )


def _recursive(
    text: str, chunk_size: int, chunk_overlap: int, language: str | None = None
) -> list[tuple[str, int]]:
    splitter = _splitter(chunk_size, chunk_overlap, language)
    return [
        (d.page_content, int(d.metadata.get("start_index", -1))) for d in splitter.create_documents([text])
    ]


def _markdown(text: str, chunk_size: int, chunk_overlap: int) -> list[tuple[str, str, int, int | None]]:
    from langchain_text_splitters import MarkdownHeaderTextSplitter

    headers = [("#", "h1"), ("##", "h2"), ("###", "h3")]
    # Headings leave the text (they would otherwise become chunks of their own) and live on in
    # `location`, which is embedded with the chunk and shown in citations.
    sections = MarkdownHeaderTextSplitter(headers, strip_headers=True).split_text(text)
    out: list[tuple[str, str, int, int | None]] = []
    cursor = 0
    for section in sections:
        path = " > ".join(section.metadata[key] for key in ("h1", "h2", "h3") if key in section.metadata)
        # The header splitter rejoins lines with Markdown hard breaks ("  \n"); undo that.
        body = re.sub(r"[ \t]+\n", "\n", section.page_content)
        # Best-effort offset of the section in the page: the header splitter does not keep it.
        found = text.find(body[:80], cursor)
        base = found if found >= 0 else -1
        if found >= 0:
            cursor = found
        for piece, start in _recursive(body, chunk_size, chunk_overlap):
            out.append((piece, path, base + start if base >= 0 and start >= 0 else -1, None))
    return out


def _code(
    text: str, language: str | None, chunk_size: int, chunk_overlap: int
) -> list[tuple[str, str, int, int | None]]:
    out: list[tuple[str, str, int, int | None]] = []
    for piece, start in _recursive(text, chunk_size, chunk_overlap, language):
        if start < 0:
            start = text.find(piece)
        first = text.count("\n", 0, start) + 1 if start >= 0 else 0
        last = first + piece.strip("\n").count("\n")
        location = f"lines {first}-{last}" if first else ""
        out.append((piece, location, start, None))
    return out
