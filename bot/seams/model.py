"""The model seam: anything that can count tokens and stream a chat completion."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from bot.types import ChatMessage, GenerationParams, ModelInfo

FinishReason = Literal["stop", "length", "cancelled"]
Constrain = bool | Literal["required"]
"""True: a reply that starts a tool call must be a well-formed one; "required": the reply must be
one (structured output, e.g. action items); False: unconstrained."""


@dataclass(frozen=True)
class Chunk:
    """Newly generated text."""

    text: str


@dataclass(frozen=True)
class Finish:
    """The last item of a stream: token counts and why generation stopped."""

    prompt_tokens: int
    completion_tokens: int
    reason: FinishReason
    # The log-probability of the first token of `GenerationParams.watch` as the reply's first token
    # (None: nothing watched, or a backend that cannot tell).
    watched: float | None = None


@dataclass(frozen=True)
class Queued:
    """The request waits for a free slot: `position` 1 is next in line; 0 means it has just started.

    Sent when a request has to wait and each time it moves up; never for one that starts at once.
    """

    position: int


@runtime_checkable
class ChatModel(Protocol):
    """A chat model. `stream` runs off the event loop; closing the iterator cancels generation."""

    @property
    def info(self) -> ModelInfo:
        """Name, device, dtype and context window."""
        ...

    def count_tokens(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        """Tokens of the prompt these messages (and tool schemas) render to, generation prompt included."""
        ...

    def count_text_tokens(self, text: str) -> int:
        """Tokens of a bare piece of text."""
        ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: Constrain = False,
    ) -> AsyncGenerator[Chunk | Finish | Queued, None]:
        """Generate a reply: `Chunk`s, then one `Finish`; a backend that queues may yield `Queued` first.

        `tools`: schemas for the chat template; `constrain`: a reply that starts a tool call must
        be a well-formed call of one of them; "required": the reply must be such a call (backends
        that cannot constrain ignore it, and the caller checks what comes back).
        """
        ...
