"""Per-conversation generation parameters: defaults from Settings, overrides from /set, validated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bot.errors import CommandError
from bot.types import GenerationParams
from config import GenerationSettings

# What /set accepts, with a short description for /help and /settings.
SETTABLE: dict[str, str] = {
    "temperature": "sampling temperature, 0 (greedy) to 2",
    "top_p": "nucleus sampling, above 0 up to 1",
    "top_k": "keep the k most likely tokens, 0 (no limit) to 1000",
    "max_tokens": "longest reply in tokens",
    "repetition_penalty": "penalty on repeats, 1.0 (none) to 2.0",
    "seed": "integer seed for reproducible replies, or 'none'",
}
# Words that put a key back to the configured default.
_RESET_WORDS = {"default", "reset", "none", "null", "random"}


def effective_params(defaults: GenerationSettings, overrides: Mapping[str, Any]) -> GenerationParams:
    """The parameters a conversation generates with: its own overrides over the defaults."""
    values = defaults.model_dump()
    values.update({k: v for k, v in overrides.items() if k in SETTABLE})
    return GenerationParams(**values)


def parse_setting(defaults: GenerationSettings, key: str, raw: str, max_reply_tokens: int) -> Any | None:
    """Validate `/set KEY VALUE`: the value to store, or None to restore the default.

    Raises CommandError with a one-line explanation for an unknown key or a bad value.
    """
    key = key.strip().lower()
    if key not in SETTABLE:
        raise CommandError(f"Unknown setting '{key}'. You can set: {', '.join(SETTABLE)}.")
    raw = raw.strip()
    if not raw:
        raise CommandError(f"Give a value: /set {key} VALUE ({SETTABLE[key]}).")
    if raw.lower() in _RESET_WORDS:
        return None
    try:
        checked = GenerationSettings.model_validate({**defaults.model_dump(), key: raw})
    except ValidationError as error:
        problem = error.errors()[0]["msg"].replace("Input should be", "must be")
        raise CommandError(f"Invalid {key} '{raw}': {problem}.") from None
    value = getattr(checked, key)
    if key == "max_tokens" and value > max_reply_tokens:
        raise CommandError(
            f"Invalid max_tokens '{raw}': must be at most {max_reply_tokens} "
            "(half the context window, so the conversation still fits)."
        )
    return value
