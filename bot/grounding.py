"""Grounding: does a reply written from passages say what they say? If not, say they do not hold it.

Small models answer from memory whatever the passages say: asked "Which company provides our
dental insurance?" next to the leave policy, the 0.5B model names a company. So a reply written
with passages in its prompt is checked before it is shown: it must take something from the
passages (a word, a number or a name the question did not already hold), and state no number or
name that neither the passages nor the question hold. A reply that fails is replaced by one that
says the documents do not hold the answer and names the documents searched. A reply that used a
tool is not checked: its facts come from the tool.

The check reads the reply against the passages, not against a list of phrases: "I don't know"
fails it for taking nothing from them, as "There are 40 parking spaces" does for its number.
It cannot see a real figure put in the wrong place ("12 parking spaces" that are Lisbon's), which
is what most of the 0.5B model's inventions are; so the engine also asks the model itself how
readily it would reply "Not in the documents" when told to if the passages do not hold the answer
(`leans_to_decline`; measured in bench/RESULTS.md). Its probability of "Yes" to "do the passages
state the answer?" was measured too, and barely moved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.seams.retriever import Passage

# Words every sentence may use whatever its source: they are evidence of nothing.
_COMMON = frozenset(
    """a about above after again all also am an and any are as at be because been before being below
    between both but by can cannot could did do does doing done down during each either every few for
    from further get gets got had has have having he her here hers him his how however i if in into is
    it its itself just may me might more most must my no nor not of off on once one only or other our
    ours out over own per same shall she should so some such than that the their theirs them then there
    these they this those through to too under until up upon us very was we were what when where which
    while who whom whose why will with within without would yes you your yours""".split()
)
_CITATION = re.compile(r"\[\d{1,2}(?:\s*[,;]\s*\d{1,2})*\]")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
_WORD = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
# Sentence starts: a capital there is grammar, not a name.
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*(?:[-*•]|\d+[.)])?\s*)$")


@dataclass(frozen=True)
class Support:
    """What the check found: the reply's new facts the passages hold, and those they do not."""

    supported: tuple[str, ...]
    unsupported: tuple[str, ...]

    @property
    def grounded(self) -> bool:
        """Whether the reply takes something from the passages and invents nothing checkable."""
        return bool(self.supported) and not self.unsupported

    def record(self) -> dict[str, object]:
        """What a reply's metadata keeps of the check."""
        return {
            "grounded": self.grounded,
            "supported": list(self.supported[:8]),
            "unsupported": list(self.unsupported[:8]),
        }


def support(reply: str, question: str, passages: Sequence[Passage]) -> Support:
    """Check `reply` against the passages it was written from and the question it answers."""
    text = _CITATION.sub(" ", reply)
    source = " ".join(f"{p.title} {p.location} {p.text}" for p in passages)
    source_words = _words(source)
    source_numbers = _numbers(source)
    asked_words = _words(question)
    asked_numbers = _numbers(question)
    supported: dict[str, None] = {}
    unsupported: dict[str, None] = {}
    for number in _numbers(text) - asked_numbers:
        (supported if number in source_numbers else unsupported)[number] = None
    for match in _WORD.finditer(text):
        word = match.group(0)
        key = _key(word)
        if key in _COMMON or _known(key, asked_words) or len(key) < 3:
            continue
        if _known(key, source_words):
            supported[key] = None
        elif _is_name(word, text[: match.start()]):
            unsupported[word] = None
    return Support(tuple(supported), tuple(unsupported))


def leans_to_decline(logprob: float | None, threshold: float) -> bool:
    """Whether the model's log-probability of opening with a decline (`Finish.watched`) says the
    passages do not hold the answer, whatever it wrote instead (`threshold` 0: never)."""
    return logprob is not None and threshold < 0 and logprob >= threshold


def not_found(passages: Sequence[Passage]) -> str:
    """The reply when the documents do not hold the answer: which documents were searched."""
    titles = list(dict.fromkeys(p.title or p.path for p in passages))
    if len(titles) == 1:
        return f"I could not find that in the team's documents. I looked in {titles[0]}, and it does not say."
    named = ", ".join(titles[:-1]) + f" and {titles[-1]}"
    return f"I could not find that in the team's documents. I looked in {named}, and none of them says."


def _key(word: str) -> str:
    word = word.lower().replace("’", "'")
    for suffix in ("'s", "'"):
        word = word.removesuffix(suffix)
    return word


def _words(text: str) -> set[str]:
    found: set[str] = set()
    for match in _WORD.finditer(text):
        key = _key(match.group(0))
        found.add(key)
        # "holidays" and "holiday", "renders" and "render": enough stemming to compare.
        if key.endswith("s") and len(key) > 3:
            found.add(key[:-1])
    return found


def _known(key: str, words: set[str]) -> bool:
    return key in words or (key.endswith("s") and key[:-1] in words)


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def _is_name(word: str, before: str) -> bool:
    """A capitalised word inside a sentence, or an acronym: a name the reply asserts."""
    if word.isupper() and len(word) > 1:
        return True
    return word[:1].isupper() and not _SENTENCE_START.search(before)
