"""Split a long reply into messages that fit a platform's limit, at paragraph boundaries, code intact.

Platform-neutral: Slack (about 3,900 characters) and Discord (2,000) use the same splitter.
Text that fits is returned unchanged. Otherwise the text is cut between paragraphs and code blocks;
a paragraph longer than the limit is cut between lines, then between words, then anywhere; a code
block longer than the limit is cut between lines and each part is closed and reopened with its
opening fence (language included), so every message renders on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A fence opens with three or more backticks or tildes, indented at most three spaces (CommonMark).
_OPEN = re.compile(r"^([ \t]{0,3})(`{3,}|~{3,})(.*)$")
_CLOSE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*$")
# Below this the fences of a split code block leave no room for code.
MIN_LIMIT = 40


@dataclass(frozen=True)
class _Block:
    """A paragraph (lines between blank lines) or a fenced code block, with the newlines before it."""

    sep: str
    text: str
    opener: str | None = None  # a code block's opening fence line, e.g. "```python"
    closer: str | None = None
    body: tuple[str, ...] = ()


def split_message(text: str, limit: int) -> list[str]:
    """`text` as messages of at most `limit` characters each (one message when it fits; none when empty)."""
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT} characters")
    if not text.strip():
        return []
    if len(text) <= limit:
        return [text]
    messages: list[str] = []
    current = ""
    for block in _blocks(text):
        for sep, piece in _pieces(block, limit):
            if current and len(current) + len(sep) + len(piece) <= limit:
                current += sep + piece
                continue
            if current.strip():
                messages.append(current.strip("\n"))
            current = piece
    if current.strip():
        messages.append(current.strip("\n"))
    return messages


def _blocks(text: str) -> list[_Block]:
    """Paragraphs and code blocks, each with the newlines that separated it from the one before."""
    lines = text.split("\n")
    blocks: list[_Block] = []
    paragraph: list[str] = []
    newlines = 0  # newlines between the previous block and the next one

    def flush() -> None:
        nonlocal paragraph, newlines
        if paragraph:
            blocks.append(_Block("\n" * newlines, "\n".join(paragraph)))
            paragraph, newlines = [], 1

    i = 0
    while i < len(lines):
        line = lines[i]
        opening = _OPEN.match(line)
        # A backtick fence's info string may not contain a backtick: "```x``` y" is inline code.
        if opening and not (opening.group(2)[0] == "`" and "`" in opening.group(3)):
            flush()
            indent, marker = opening.group(1), opening.group(2)
            body: list[str] = []
            j = i + 1
            closer: str | None = None
            while j < len(lines):
                closing = _CLOSE.match(lines[j])
                if closing and closing.group(1)[0] == marker[0] and len(closing.group(1)) >= len(marker):
                    closer = lines[j]
                    break
                body.append(lines[j])
                j += 1
            # An unclosed fence (a reply cut short) is closed, so that the rest does not render as code.
            closer = closer if closer is not None else indent + marker
            whole = "\n".join([line, *body, closer])
            blocks.append(_Block("\n" * newlines, whole, line, closer, tuple(body)))
            newlines = 1
            i = j + 1
        elif not line.strip():
            flush()
            newlines += 1
            i += 1
        else:
            paragraph.append(line)
            i += 1
    flush()
    if blocks:
        blocks[0] = _Block("", blocks[0].text, blocks[0].opener, blocks[0].closer, blocks[0].body)
    return blocks


def _pieces(block: _Block, limit: int) -> list[tuple[str, str]]:
    """The block as (separator, text) pieces of at most `limit` characters each."""
    if len(block.text) <= limit:
        return [(block.sep, block.text)]
    if block.opener is None:
        pieces = _split_text(block.text, limit, ("\n", " "))
        return [(block.sep, pieces[0][1]), *pieces[1:]]
    return [(block.sep if n == 0 else "\n", code) for n, code in enumerate(_split_code(block, limit))]


def _split_text(text: str, limit: int, separators: tuple[str, ...]) -> list[tuple[str, str]]:
    """Cut at the first separator that helps (lines, then words), else every `limit` characters."""
    if len(text) <= limit:
        return [("", text)]
    if not separators:
        return [("", text[i : i + limit]) for i in range(0, len(text), limit)]
    sep, rest = separators[0], separators[1:]
    out: list[tuple[str, str]] = []
    for n, part in enumerate(text.split(sep)):
        sub = _split_text(part, limit, rest)
        if n:
            sub[0] = (sep, sub[0][1])
        out.extend(sub)
    return out


def _split_code(block: _Block, limit: int) -> list[str]:
    """A code block as several, each closed and reopened with the original fences."""
    assert block.opener is not None and block.closer is not None
    overhead = len(block.opener) + len(block.closer) + 2
    room = limit - overhead
    if room < 1:
        # A fence line so long there is no room for code: cut the block as plain text.
        return [p for _, p in _split_text(block.text, limit, ("\n",))]
    lines: list[str] = []
    for line in block.body:
        # A line longer than the room is cut where it must be; nothing is dropped.
        lines.extend([line[i : i + room] for i in range(0, len(line), room)] or [""])
    parts: list[str] = []
    group: list[str] = []
    size = 0
    for line in lines:
        extra = len(line) + (1 if group else 0)
        if group and size + extra > room:
            parts.append("\n".join([block.opener, *group, block.closer]))
            group, size = [], 0
            extra = len(line)
        group.append(line)
        size += extra
    if group:
        parts.append("\n".join([block.opener, *group, block.closer]))
    return parts
