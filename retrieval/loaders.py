"""Reading files into text with their structure: Markdown, plain text, HTML, PDF and source code."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

from bot.errors import LoadError, UnsupportedFileError

Kind = Literal["markdown", "text", "html", "pdf", "code"]


@dataclass(frozen=True)
class Page:
    """A span of the document's text: a PDF page, or the whole text for other kinds."""

    text: str
    number: int | None


@dataclass(frozen=True)
class LoadedDocument:
    """A file's text, title and kind."""

    path: Path
    title: str
    kind: Kind
    pages: list[Page]
    language: str | None = None


# Code suffixes map to langchain_text_splitters.Language values where one exists.
_CODE: dict[str, str | None] = {
    ".py": "python",
    ".js": "js",
    ".mjs": "js",
    ".jsx": "js",
    ".ts": "ts",
    ".tsx": "ts",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".c": "c",
    ".h": "c",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".swift": "swift",
    ".scala": "scala",
    ".lua": "lua",
    ".sh": None,
    ".sql": None,
    ".toml": None,
    ".yaml": None,
    ".yml": None,
    ".json": None,
    ".css": None,
}
SUFFIXES: dict[str, Kind] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".log": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    **{suffix: "code" for suffix in _CODE},
}
_SKIP_DIRS = {"node_modules", "__pycache__", "venv", ".venv", "dist", "build"}


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files to ingest: files as given, folders walked (sorted, hidden and build folders skipped)."""
    seen: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise LoadError(f"No such file or directory: {path}")
        if not path.is_dir():
            check_regular(path)
            resolved = path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                yield resolved
            continue
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
            for name in sorted(files):
                if name.startswith(".") or Path(name).suffix.lower() not in SUFFIXES:
                    continue
                resolved = (Path(root) / name).resolve()
                # Not only regular files: a FIFO or device here is reported (by check_regular), not
                # silently passed over.
                if resolved not in seen and resolved.exists() and not resolved.is_dir():
                    seen.add(resolved)
                    yield resolved


_NOT_REGULAR = [
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
]


def check_regular(path: Path) -> None:
    """Raise LoadError unless `path` is a regular file: reading a device or a pipe may never end."""
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise LoadError(f"{path}: {error.strerror or error}") from error
    if stat.S_ISREG(mode):
        return
    what = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    raise LoadError(f"{path} is {what}, not a regular file: chinwag ingests files and folders")


def load(path: Path) -> LoadedDocument:
    """Read one file; unsupported, empty, binary, unreadable or non-regular files raise LoadError."""
    path = Path(path).resolve()
    check_regular(path)
    suffix = path.suffix.lower()
    kind = SUFFIXES.get(suffix)
    if kind is None:
        raise UnsupportedFileError(f"{path.name}: unsupported file type {suffix or '(no suffix)'}")
    if kind == "pdf":
        return _load_pdf(path)
    text = _read_text(path)
    if kind == "markdown":
        return LoadedDocument(path, _markdown_title(text) or path.stem, kind, [Page(text, None)])
    if kind == "html":
        title, converted = html_to_markdown(text)
        if not converted.strip():
            raise LoadError(f"{path.name} has no text")
        return LoadedDocument(path, title or path.stem, kind, [Page(converted, None)])
    if kind == "code":
        return LoadedDocument(path, path.name, kind, [Page(text, None)], _CODE.get(suffix))
    return LoadedDocument(path, path.name, kind, [Page(text, None)])


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LoadError(f"{path.name}: {error.strerror or error}") from error
    if b"\x00" in data[:8192]:
        raise LoadError(f"{path.name} is not a text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        if text.count("\ufffd") > len(text) / 100:
            raise LoadError(f"{path.name} is not UTF-8 text") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise LoadError(f"{path.name} is empty")
    return text


def _markdown_title(text: str) -> str | None:
    match = re.search(r"^#\s+(.+?)\s*#*\s*$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _load_pdf(path: Path) -> LoadedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(f"{path.name} is encrypted")
        pages = []
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").replace("\r\n", "\n")
            if text.strip():
                pages.append(Page(text, number))
        title = ""
        if reader.metadata is not None and reader.metadata.title:
            title = str(reader.metadata.title).strip()
    except LoadError:
        raise
    except (PdfReadError, OSError, ValueError, KeyError, TypeError) as error:
        raise LoadError(f"{path.name} is not a readable PDF ({type(error).__name__}: {error})") from error
    except Exception as error:  # pypdf raises many kinds on malformed files
        raise LoadError(f"{path.name} is not a readable PDF ({type(error).__name__})") from error
    if not pages:
        raise LoadError(f"{path.name} has no extractable text (scanned?)")
    return LoadedDocument(path, title or path.stem, "pdf", pages)


# HTML ----------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "nav", "header", "footer", "noscript", "svg", "template", "head"}
_BLOCK_TAGS = {"p", "div", "section", "article", "main", "table", "tr", "ul", "ol", "blockquote", "dl", "dd"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _HtmlToMarkdown(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.skipping = 0
        self.pre = 0
        self.heading: int | None = None
        self.title: list[str] = []
        self.in_title = False
        self.first_h1: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _SKIP_TAGS:
            self.skipping += 1
            return
        if tag in _HEADINGS:
            self._flush()
            self.heading = _HEADINGS[tag]
        elif tag in _BLOCK_TAGS or tag in ("td", "th"):
            self._flush()
        elif tag == "li":
            self._flush()
            self.current.append("- ")
        elif tag == "br":
            self._flush()
        elif tag == "pre":
            self._flush()
            self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
            return
        if tag in _HEADINGS and self.heading is not None:
            text = _squash("".join(self.current))
            level = self.heading
            self.current, self.heading = [], None
            if text:
                if level == 1 and self.first_h1 is None:
                    self.first_h1 = text
                self.lines += ["", "#" * level + " " + text, ""]
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self._flush(keep_spacing=True)
        elif tag in _BLOCK_TAGS or tag in ("li", "td", "th", "dt"):
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        if self.skipping:
            return
        self.current.append(data)

    def _flush(self, keep_spacing: bool = False) -> None:
        raw = "".join(self.current)
        self.current = []
        if keep_spacing or self.pre:
            if raw.strip():
                self.lines.append(raw.strip("\n"))
            return
        text = _squash(raw)
        if text and text != "-":
            self.lines.append(text)

    def result(self) -> tuple[str, str]:
        self._flush()
        text = "\n".join(self.lines)
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        return _squash("".join(self.title)) or (self.first_h1 or ""), text


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", unescape(text)).strip()


def html_to_markdown(html: str) -> tuple[str, str]:
    """(title, Markdown-like text) of an HTML page: headings as '#' lines, no scripts or navigation."""
    parser = _HtmlToMarkdown()
    parser.feed(html)
    parser.close()
    return parser.result()
