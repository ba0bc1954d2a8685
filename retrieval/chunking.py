"""Splitting documents into chunks that know where they came from (heading path, page, lines)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from retrieval.loaders import LoadedDocument


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


def split(doc: LoadedDocument, chunk_size: int = 1000, chunk_overlap: int = 150) -> list[TextChunk]:
    """Chunks of at most `chunk_size` characters, neighbours sharing about `chunk_overlap`."""
    if chunk_size < 100 or not 0 <= chunk_overlap < chunk_size:
        raise ValueError("chunk_size must be >= 100 and 0 <= chunk_overlap < chunk_size")
    pieces: list[tuple[str, str, int, int | None]] = []
    for page in doc.pages:
        if doc.kind in ("markdown", "html"):
            pieces += _markdown(page.text, chunk_size, chunk_overlap)
        elif doc.kind == "code":
            pieces += _code(page.text, doc.language, chunk_size, chunk_overlap)
        else:
            location = f"page {page.number}" if page.number is not None else ""
            pieces += [
                (text, location, start, page.number)
                for text, start in _recursive(page.text, chunk_size, chunk_overlap)
            ]
    chunks: list[TextChunk] = []
    for text, location, start, page_number in pieces:
        if text.strip():
            chunks.append(TextChunk(text.strip(), location, start, page_number, len(chunks)))
    return chunks


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
