"""The prompt and its token budget: system prompt, running summary, newest turns, room for the reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.seams.history import StoredMessage
from bot.seams.model import ChatModel
from bot.types import ChatMessage

SUMMARY_HEADER = "Summary of the earlier part of this conversation (older turns, condensed):"
SUMMARY_INSTRUCTIONS = (
    "You keep a running summary of a conversation between a user and an assistant. "
    "Update the summary with the new turns. Keep names, facts, numbers, decisions, "
    "preferences the user stated and open questions; drop small talk. "
    "Write only the updated summary, in plain sentences, no preamble."
)
# Tokens kept free for the summary prompt's own wording.
_SUMMARY_PROMPT_SLACK = 96
# Safety margin per message on top of the measured template overhead: tokenising a message's
# text alone can differ by a token or two from tokenising it inside the template.
_MESSAGE_SLACK = 2


def usable_in_context(message: StoredMessage) -> bool:
    """Whether a stored message belongs in the prompt (refused input, failed replies, and questions
    deleted on their platform with their replies, do not)."""
    if message.role not in ("user", "assistant") or not message.content.strip():
        return False
    if message.metadata.get("deleted"):
        return False
    if message.role == "user":
        return message.status != "rejected"
    return message.status in ("complete", "interrupted")


def system_message(system_prompt: str, summary: str | None) -> ChatMessage:
    """The system message: the persona, then the running summary when there is one."""
    if summary:
        return ChatMessage("system", f"{system_prompt}\n\n{SUMMARY_HEADER}\n{summary}")
    return ChatMessage("system", system_prompt)


def with_context(messages: list[ChatMessage], context: str) -> list[ChatMessage]:
    """The messages with `context` as a system message just before the latest user message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return [*messages[:i], ChatMessage("system", context), *messages[i:]]
    return [*messages, ChatMessage("system", context)]


@dataclass
class PromptPlan:
    """Either a prompt that fits (`fold` empty) or the oldest turns to fold into the summary first."""

    messages: list[ChatMessage] = field(default_factory=list)
    prompt_tokens: int = 0
    fold: list[StoredMessage] = field(default_factory=list)
    kept: int = 0


class PromptBudget:
    """Fits a conversation into the context window, counting with the model's own tokenizer."""

    def __init__(self, model: ChatModel, window: int, keep_ratio: float, summary_max_tokens: int) -> None:
        self.model = model
        self.window = window
        self.keep_ratio = keep_ratio
        self.summary_max_tokens = summary_max_tokens
        self._overhead: int | None = None

    @property
    def message_overhead(self) -> int:
        """Tokens the chat template adds around one message (measured once on this model)."""
        if self._overhead is None:
            base = [ChatMessage("system", "x")]
            with_one = [*base, ChatMessage("user", "hello")]
            measured = (
                self.model.count_tokens(with_one)
                - self.model.count_tokens(base)
                - self.model.count_text_tokens("hello")
            )
            self._overhead = max(measured, 0) + _MESSAGE_SLACK
        return self._overhead

    def cost(self, message: StoredMessage | ChatMessage) -> int:
        """Estimated tokens of one message inside the prompt (never an underestimate in practice)."""
        return self.model.count_text_tokens(message.content) + self.message_overhead

    def max_message_tokens(self, system_prompt: str, max_tokens: int) -> int:
        """The longest user message that can be answered, whatever the summary grows to."""
        fixed = self.model.count_tokens([ChatMessage("system", system_prompt)])
        room = self.window - max_tokens - fixed - self.summary_max_tokens - self.message_overhead
        return max(room - self.model.count_text_tokens(SUMMARY_HEADER), 0)

    def plan(
        self,
        system_prompt: str,
        summary: str | None,
        turns: Sequence[StoredMessage],
        max_tokens: int,
        context: str | None = None,
    ) -> PromptPlan:
        """Fit the newest turns; if older ones do not fit, say which to fold into the summary.

        `context` (what the documents say to this turn) goes in a system message of its own before
        the latest user message, in this prompt only: the messages before it are rendered as
        stored, the same on every turn, so the model's prefix cache can serve them.
        """
        turns = [m for m in turns if usable_in_context(m)]
        system = system_message(system_prompt, summary)
        limit = self.window - max_tokens
        room = limit - self.model.count_tokens([system])
        if context:
            room -= self.model.count_text_tokens(context) + self.message_overhead
        costs = [self.cost(m) for m in turns]

        kept = _newest_that_fit(costs, room)
        if kept == len(turns):
            messages = [system, *(ChatMessage(m.role, m.content) for m in turns)]
            if context:
                messages = with_context(messages, context)
            exact = self.model.count_tokens(messages)
            if exact <= limit:
                return PromptPlan(messages=messages, prompt_tokens=exact, kept=kept)
            kept -= 1  # the estimate was short; fold one more turn
        # Fold enough that the next few turns fit without summarising again.
        kept = min(kept, _newest_that_fit(costs, int(room * self.keep_ratio)))
        kept = max(kept, 1)
        start = len(turns) - kept
        # Keep whole exchanges: the kept part starts with a user message where possible.
        while start < len(turns) - 1 and turns[start].role != "user":
            start += 1
        return PromptPlan(fold=list(turns[:start]), kept=len(turns) - start)

    def summary_batches(
        self, previous: str | None, turns: Sequence[StoredMessage]
    ) -> list[list[StoredMessage]]:
        """Split turns to fold into batches whose summary prompt fits the window."""
        budget = (
            self.window
            - self.summary_max_tokens
            - _SUMMARY_PROMPT_SLACK
            - self.model.count_text_tokens(SUMMARY_INSTRUCTIONS)
            - self.summary_max_tokens  # the previous summary, at most this long
        )
        batches: list[list[StoredMessage]] = [[]]
        used = 0
        for message in turns:
            cost = min(self.cost(message), budget)
            if batches[-1] and used + cost > budget:
                batches.append([])
                used = 0
            batches[-1].append(message)
            used += cost
        return [batch for batch in batches if batch]

    def summary_prompt(self, previous: str | None, turns: Sequence[StoredMessage]) -> list[ChatMessage]:
        """The prompt that asks the model to extend the running summary with `turns`."""
        budget = self.window - 2 * self.summary_max_tokens - _SUMMARY_PROMPT_SLACK
        lines = []
        for message in turns:
            speaker = "User" if message.role == "user" else "Assistant"
            lines.append(f"{speaker}: {self._clip(message.content, budget)}")
        body = (
            f"Summary so far:\n{previous or '(nothing yet)'}\n\n"
            "New turns:\n" + "\n".join(lines) + "\n\nWrite the updated summary."
        )
        return [ChatMessage("system", SUMMARY_INSTRUCTIONS), ChatMessage("user", body)]

    def _clip(self, text: str, max_tokens: int) -> str:
        """Shorten one very long message so that a single summary prompt still fits."""
        if self.model.count_text_tokens(text) <= max_tokens:
            return text
        # Characters per token is roughly 3-4; shrink until it fits.
        clipped = text[: max_tokens * 3]
        while clipped and self.model.count_text_tokens(clipped) > max_tokens:
            clipped = clipped[: int(len(clipped) * 0.8)]
        return clipped + " […]"


def _newest_that_fit(costs: Sequence[int], room: int) -> int:
    """How many of the newest messages fit in `room` tokens."""
    used = 0
    for count, cost in enumerate(reversed(costs)):
        used += cost
        if used > room:
            return count
    return len(costs)
