"""Spans a translation must not touch: code, mentions, links, emoji, kept aside as numbered marks.

The model sees `⟦1⟧` where a code block was and is told to copy the marks; they are put back
afterwards. A mark the model dropped is appended rather than lost.
"""

from __future__ import annotations

import re

_SPANS = re.compile(
    r"```.*?```"  # fenced code
    r"|`[^`\n]+`"  # inline code
    r"|<[@#!][^>\s]+>"  # Slack/Discord mentions, channels, special mentions (<@U1>, <#C1|x>, <!here>)
    r"|<a?:\w+:\d+>"  # Discord custom emoji
    r"|<https?://[^>\s]+>"  # Slack links
    r"|\[[^\]\n]+\]\(https?://[^)\s]+\)"  # Markdown links
    r"|https?://\S+"  # bare links
    r"|(?<!\w)@[\w.-]+"  # @names
    r"|:[a-z0-9_+-]+:"  # :shortcode: emoji
    r"|[\U0001F000-\U0001FAFF\u2600-\u27BF\uFE0F\u200D]+",  # emoji
    re.DOTALL,
)
_MARK = re.compile(r"⟦(\d+)⟧")


def protect(text: str) -> tuple[str, list[str]]:
    """`text` with each span the translation must keep replaced by ⟦n⟧, and the spans."""
    kept: list[str] = []

    def mark(match: re.Match[str]) -> str:
        kept.append(match.group(0))
        return f"⟦{len(kept)}⟧"

    return _SPANS.sub(mark, text), kept


def restore(text: str, kept: list[str]) -> str:
    """Put the kept spans back where the marks are; spans whose mark was lost go at the end."""
    used: set[int] = set()

    def back(match: re.Match[str]) -> str:
        n = int(match.group(1))
        if 1 <= n <= len(kept):
            used.add(n)
            return kept[n - 1]
        return ""

    out = _MARK.sub(back, text)
    missing = [kept[n - 1] for n in range(1, len(kept) + 1) if n not in used]
    if missing:
        out = out.rstrip() + "\n\n" + "\n".join(missing)
    return out
