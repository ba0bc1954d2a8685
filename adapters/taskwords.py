"""The words after a task command that say what to read: a channel, how far back, how many.

`#ops 24h`, `<#C1|ops> 7d`, `50 messages`, `bots`: the same on Slack (`/chinwag summarize …`) and
Discord (`/summarize since: …`); each platform resolves the channel its own way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Slack: <#C1|name>, #name, C0123ABCD; Discord: <#123…>, a bare snowflake.
_CHANNEL = re.compile(r"^(?:<#([A-Z0-9]\w*)(?:\|([^>]*))?>|#([\w.-]+)|(C[A-Z0-9]{6,}|\d{15,}))$")
_SPAN = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
DEFAULT_SPAN_S = 86400


@dataclass(frozen=True)
class Window:
    """Which messages a channel task reads: a channel (None: where it was asked), how far back,
    how many at most, and whether bots count."""

    channel: str | None = None  # a channel id, or "#name" to look up
    seconds: int | None = None
    count: int | None = None
    bots: bool = False

    def label(self, channel: str) -> str:
        """ "<#C1>, last 24h" / "<#C1>, last 50 messages" (`channel` as it should be shown)."""
        if self.count is not None:
            return f"{channel}, last {self.count} messages"
        seconds = self.seconds or DEFAULT_SPAN_S
        for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
            if seconds % size == 0:
                return f"{channel}, last {seconds // size}{unit}"
        return channel


def parse_window(words: Sequence[str]) -> Window:
    """`#ops 24h`, `<#C1|ops> 7d`, `50 messages`, `bots`; ValueError names a word it cannot read."""
    channel: str | None = None
    seconds: int | None = None
    count: int | None = None
    bots = False
    rest = list(words)
    while rest:
        word = rest.pop(0)
        low = word.lower()
        if match := _CHANNEL.match(word):
            channel = match.group(1) or match.group(4) or "#" + (match.group(3) or "")
        elif match := _SPAN.match(low):
            seconds = int(match.group(1)) * _UNITS[match.group(2)]
        elif low.isdigit():
            count = int(low)
            if rest and rest[0].lower() in ("messages", "message", "msgs"):
                rest.pop(0)
        elif low in ("bots", "+bots"):
            bots = True
        else:
            raise ValueError(word)
    if count is not None and count < 1:
        raise ValueError(str(count))
    return Window(channel, seconds, count, bots)
