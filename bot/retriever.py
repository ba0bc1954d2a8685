"""The retrieval seam: passages from the team's documents, searched in the scopes a conversation may see."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

GLOBAL_SCOPE = "global"


class Passage(Protocol):
    """A piece of a document, with where it came from and how well it matched."""

    @property
    def id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def title(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def scope(self) -> str: ...


@runtime_checkable
class Retriever(Protocol):
    """Searches ingested documents; blocking work happens off the event loop."""

    async def search(self, query: str, scopes: Sequence[str], k: int) -> Sequence[Passage]:
        """The `k` passages most similar to `query` in any of `scopes`, best first."""
        ...

    async def get(self, ids: Sequence[str]) -> Sequence[Passage]:
        """Passages by id (those that still exist), with score 0."""
        ...


def scopes_for(scope: str) -> list[str]:
    """The scopes a conversation in `scope` may search: its own and the global one, never another's."""
    return [scope] if scope == GLOBAL_SCOPE else [scope, GLOBAL_SCOPE]


def cite_label(passage: Passage, sep: str = " — ") -> str:
    """How a source is named: title, and section or page when known."""
    return source_label(passage.title or passage.path, passage.location, sep)


def source_label(title: str, location: str, sep: str = " — ") -> str:
    """Title and location, without repeating the title when the heading path starts with it."""
    if location == title:
        location = ""
    elif location.startswith(title + " > "):
        location = location[len(title) + 3 :]
    return f"{title}{sep}{location}" if location else title


# How passages enter a prompt and leave as sources --------------------------------------

# Worded for small models: with a bare "[1] Title" header per passage, Qwen2.5-0.5B often answered
# with the header alone, and an example sentence with a fact in it leaked into answers.
# "Passage [1] (from ...)" and a fact-free citation example answered 14 of 16 eval questions
# (13 of 16 with either other wording on the same chunks; bench/retrieval_eval.py).
PASSAGES_INTRO = (
    "Use the numbered passages below, taken from the team's documents, to answer the user's latest "
    "message. Answer in your own words, in full sentences, and put the number of each passage you "
    "used in square brackets at the end of the sentence it supports, like this: [2]. "
    "If the passages do not contain the answer, say so, then answer from your own knowledge only if "
    "you are sure."
)
NO_PASSAGES = (
    "No passage from the team's documents matched the user's latest message. Answer from your own "
    "knowledge, or say that you do not know; do not invent document citations."
)


def passage_block(number: int, passage: Passage) -> str:
    """One numbered passage as the model sees it."""
    return f"Passage [{number}] (from {cite_label(passage, sep=', ')}):\n{passage.text.strip()}"


def with_passages(system_prompt: str, passages: Sequence[Passage]) -> str:
    """The system prompt with the passages (or the note that none matched) appended."""
    if not passages:
        return f"{system_prompt}\n\n{NO_PASSAGES}"
    blocks = "\n\n".join(passage_block(n, p) for n, p in enumerate(passages, start=1))
    return f"{system_prompt}\n\n{PASSAGES_INTRO}\n\n{blocks}"


def source_record(number: int, passage: Passage) -> dict[str, Any]:
    """What a reply's metadata keeps of a passage (its text stays in the store)."""
    return {
        "n": number,
        "id": passage.id,
        "title": passage.title,
        "path": passage.path,
        "location": passage.location,
        "score": round(float(passage.score), 4),
    }


_CITATION = re.compile(r"\[(\d{1,2})(?:\s*[,;]\s*(\d{1,2}))*\]")


def mark_cited(sources: list[dict[str, Any]], reply: str) -> list[dict[str, Any]]:
    """Mark which sources the reply cites as [n]."""
    cited: set[int] = set()
    for match in _CITATION.finditer(reply):
        cited.update(int(n) for n in re.findall(r"\d{1,2}", match.group(0)))
    return [{**source, "cited": source["n"] in cited} for source in sources]


def sources_footer(sources: Sequence[dict[str, Any]]) -> str:
    """The compact "Sources" list a reply ends with: cited sources, or all when none is cited."""
    shown = [s for s in sources if s.get("cited")] or list(sources)
    if not shown:
        return ""
    items = []
    for source in shown:
        label = source_label(source["title"] or source["path"], source.get("location") or "")
        items.append(f"[{source['n']}] {label}")
    return "Sources: " + "; ".join(items)
