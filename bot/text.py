"""Text as it arrives, made storable: lone surrogates repaired, the original kept.

Python strings may hold lone surrogates: bytes that were not valid UTF-8, decoded with
`surrogateescape` (command-line arguments, stdin), or a "\\ud800" escape in a platform's JSON.
Neither the tokenizer nor the database accepts them, so a message holding one would be lost.
`repair` replaces each with U+FFFD (visible, like any UTF-8 decoder does) and returns the
original as JSON, from which `json.loads` gives back the exact string (and
`.encode("utf-8", "surrogateescape")` the exact bytes, for text that came from bytes).
"""

from __future__ import annotations

import json
import re

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def repair(text: str) -> tuple[str, str | None]:
    """(`text` with lone surrogates replaced, the original as a JSON string; None if nothing was lost)."""
    if _SURROGATE.search(text) is None:
        return text, None
    # UTF-16 joins a high and a low surrogate that belong together; only lone ones are replaced.
    fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if fixed.count(REPLACEMENT) == text.count(REPLACEMENT):
        return fixed, None  # only pairs, now joined: nothing was lost
    return fixed, json.dumps(text)


def read_bytes_as_text(data: bytes) -> str:
    """Bytes from outside (stdin, a file) as text, invalid UTF-8 kept as surrogate escapes for `repair`."""
    return data.decode("utf-8", "surrogateescape")
