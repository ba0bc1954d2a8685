"""A file as the messages a task reads: a chat log ("Name: text" lines) or a document's paragraphs."""

from __future__ import annotations

import re

from bot.types import SourceMessage

_SPEAKER = re.compile(r"^\s*(?:\[[^\]]{1,40}\]\s*)?([A-Za-z][\w .'-]{0,30}):\s+(\S.*)$")


def messages_from_text(text: str) -> tuple[SourceMessage, ...]:
    """Most non-empty lines "Name: text" → one message per line (a continuation line joins the one
    before); otherwise one message per paragraph, with no author."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ()
    spoken = [_SPEAKER.match(line) for line in lines]
    if sum(1 for m in spoken if m) >= 0.6 * len(lines):
        messages: list[SourceMessage] = []
        for line, match in zip(lines, spoken, strict=True):
            if match:
                messages.append(SourceMessage(match.group(2).strip(), author=match.group(1).strip()))
            elif messages:
                last = messages[-1]
                messages[-1] = SourceMessage(f"{last.text}\n{line.strip()}", author=last.author)
        return tuple(messages)
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return tuple(SourceMessage(p) for p in paragraphs)
