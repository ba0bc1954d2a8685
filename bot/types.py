"""The neutral message pair: what adapters hand the engine, and the events it yields back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
Status = Literal["complete", "interrupted", "failed", "rejected"]


@dataclass(frozen=True)
class SourceMessage:
    """One message of a thread, channel or file that a language task reads (`bot.tasks`).

    `author` is a name, never a platform id; `bot` marks bots' messages and chinwag's own, which
    tasks leave out unless asked; `link` is the message's permalink, when the platform has one.
    """

    text: str
    author: str = ""
    id: str | None = None
    timestamp: datetime | None = None
    link: str | None = None
    bot: bool = False


@dataclass(frozen=True)
class Incoming:
    """One message from a person on some platform, as the engine sees it.

    The conversation is found by (platform, scope, channel, thread); `conversation_id`,
    when given, names a stored conversation directly (the CLI's --conversation / --resume).
    """

    text: str
    platform: str
    scope: str = "local"
    channel: str = "default"
    thread: str | None = None
    user_id: str = "local-user"
    user_name: str | None = None
    message_id: str | None = None
    conversation_id: int | None = None
    # What a language task (/summarize, /translate, /actions, custom commands) reads, when the
    # adapter fetched it (a Slack thread, a Discord channel, a file); None: the conversation itself.
    source: tuple[SourceMessage, ...] | None = None
    # What `source` is, for the reply and the history ("#incidents, last 24h", "notes.md").
    source_label: str | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One message of a prompt, in the shape chat templates take."""

    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        """The dict `apply_chat_template` expects."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters of one generation."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    max_tokens: int = 512
    repetition_penalty: float = 1.0
    seed: int | None = None
    # A reply opening whose log-probability at the reply's first token the stream's Finish reports
    # (`Finish.watched`): how readily the model would have said it, whatever it said instead.
    watch: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What `/model` shows."""

    name: str
    device: str
    dtype: str
    context_window: int
    # A model on a model server: the server's address (without credentials), and what the user
    # should know about how it is used there (e.g. parameters it refuses).
    server: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    """Counts and timings of one reply."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    first_token_ms: int | None = None


# Events the engine yields -----------------------------------------------------------


@dataclass(frozen=True)
class TurnStarted:
    """The user's message is stored; generation is about to start."""

    conversation_id: int
    user_message_id: int


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply as it is generated."""

    text: str


@dataclass(frozen=True)
class Notice:
    """Something the user should know while waiting (e.g. older turns being summarised)."""

    text: str


ToolStatus = Literal["ok", "error", "timeout", "invalid"]


@dataclass(frozen=True)
class ToolCall:
    """The model called a tool: what with, what came back, how it went."""

    name: str
    arguments: dict[str, Any]
    result: str
    status: ToolStatus
    duration_ms: int

    def summary(self, limit: int = 120) -> str:
        """One line: `calculator(expression="1234*5678") → 7006652`."""
        args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in self.arguments.items())
        result = " ".join(self.result.split())
        if len(result) > limit:
            result = result[: limit - 1] + "…"
        mark = "→" if self.status == "ok" else f"✗ {self.status}:"
        return f"{self.name}({args}) {mark} {result}"


@dataclass(frozen=True)
class CommandResult:
    """The answer to a /command (Markdown)."""

    conversation_id: int
    command: str
    text: str
    ok: bool = True


@dataclass(frozen=True)
class TurnDone:
    """The reply is complete (or was interrupted) and stored."""

    conversation_id: int
    message_id: int
    text: str
    status: Status
    usage: Usage
    model: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TurnFailed:
    """The turn could not be answered; `message` is one line fit for the user, `message_id` the
    stored reply that failed, when there is one."""

    message: str
    conversation_id: int | None = None
    message_id: int | None = None


Event = TurnStarted | TextDelta | Notice | ToolCall | CommandResult | TurnDone | TurnFailed
