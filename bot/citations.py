"""Citations: how retrieved passages enter a prompt, and how a reply names its sources."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from bot.seams.retriever import Passage


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

# Where passages go: in a system message of their own just before the user's latest message, not
# in the leading system prompt. The leading system prompt then stays the same from turn to turn,
# and so does everything before the latest exchange, so the scheduler's prefix cache serves the
# conversation and a turn encodes only the last exchange, its passages and its message (with the
# passages in the leading system prompt, every turn with new passages re-encoded the whole
# history). Later prompts show earlier messages as they are stored, without their passages.
#
# Worded for small models, by bench/quality.py's document questions (figures in bench/RESULTS.md):
# - "Passage [1] (from ...)" headers: with a bare "[1] Title" the model often answered with the
#   header alone.
# - The instructions after the passages, and no citation example: a wording with an example
#   ("... like this: [2]") answered fewer questions in this place, often with a bare "[2]", and an
#   example sentence with a fact in it leaked into answers. Of the wordings tried this one answered
#   the most, though it cites less often (the sources footer then lists every passage).
PASSAGES_INTRO = "Passages from the team's documents for the user's latest message:"
# How readily the model would open with this reply, asked for when the passages do not hold the
# answer, is the engine's measure of whether they do (`retrieval.decline_logprob`). Only that one
# first token is read under this task: told so in the prompt it writes its answer from, the 0.5B
# model declined half the questions the passages do answer (bench/RESULTS.md).
NOT_IN_DOCUMENTS = "Not in the documents"
PASSAGES_TASK = (
    "Answer the user's latest message from these passages, in your own words and in full "
    "sentences. After each sentence that uses a passage, put the passage's number in square "
    "brackets. If the passages do not contain the answer, say so, then answer from your own "
    "knowledge only if you are sure."
)
PASSAGES_TASK_DECLINE = PASSAGES_TASK.split(" If the passages")[0] + (
    f" If the passages do not contain the answer, reply only: {NOT_IN_DOCUMENTS}."
)


def passage_block(number: int, passage: Passage) -> str:
    """One numbered passage as the model sees it."""
    return f"Passage [{number}] (from {cite_label(passage, sep=', ')}):\n{passage.text.strip()}"


def passages_context(passages: Sequence[Passage], task: str = PASSAGES_TASK) -> str | None:
    """What the model is told of the documents for the user's latest message (None: nothing).

    When no passage matched, the prompt is the one without documents. A note saying so, next to the
    question, talked the 0.5B model out of its tools ("answer from your own knowledge") and sent
    SmolLM2 off topic even when it said only "do not cite any".
    """
    if not passages:
        return None
    blocks = "\n\n".join(passage_block(n, p) for n, p in enumerate(passages, start=1))
    return f"{PASSAGES_INTRO}\n\n{blocks}\n\n{task}"


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


# What a reply says when the documents could not be searched (a Chroma server down): the answer
# still comes, and the person reading it knows it was written without them.
DOCUMENTS_UNAVAILABLE = "The team's documents are unavailable right now: this answer is without them."


def documents_notice(metadata: dict[str, Any]) -> str:
    """The line a reply shows under its answer about the documents ("" when there is nothing to say)."""
    return DOCUMENTS_UNAVAILABLE if metadata.get("documents") == "unavailable" else ""
