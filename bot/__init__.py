"""The conversation engine: turn pipeline, prompt budget, model backends, commands and the CLI."""

from bot.types import (
    ChatMessage,
    CommandResult,
    Event,
    GenerationParams,
    Incoming,
    ModelInfo,
    Notice,
    TextDelta,
    TurnDone,
    TurnFailed,
    TurnStarted,
    Usage,
)

__all__ = [
    "ChatMessage",
    "CommandResult",
    "Event",
    "GenerationParams",
    "Incoming",
    "ModelInfo",
    "Notice",
    "TextDelta",
    "TurnDone",
    "TurnFailed",
    "TurnStarted",
    "Usage",
]
