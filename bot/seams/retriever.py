"""The retrieval seam: passages from the team's documents, searched in the scopes a conversation may see."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

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
    @property
    def agreed(self) -> bool:
        """Whether it came first both by meaning and by words (a hybrid search's evidence)."""
        ...


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
