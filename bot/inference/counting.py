"""Token counts for a model that runs elsewhere (on a model server), without loading it.

The budget needs prompt sizes before each request. When the model's tokenizer and chat template
are on this machine (a local model directory, a prepared embedded model, the Hugging Face cache),
`TemplateTokenizer` renders and tokenizes exactly as the server will, with `tokenizers` and Jinja
only: transformers would cost seconds of imports and its tokenizer classes nothing more. Otherwise
`TokenEstimate` guesses from the text's size and corrects itself with the prompt sizes the server
reports, keeping a margin so that a prompt is never larger than the budget thinks.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

log = logging.getLogger(__name__)

# Tokens the estimate adds around each message (role markers) and for the reply's opening.
_MESSAGE_TOKENS = 4
_PROMPT_TOKENS = 3
# Bytes of UTF-8 per token: English runs near 4, code and CJK nearer 3 (one CJK character is
# 3 bytes and about a token), so 3 overestimates rather than under until the server corrects it.
_BYTES_PER_TOKEN = 3.0
# The margin kept over the largest ratio of reported to estimated prompt size seen lately.
_MARGIN = 1.1
_RATIOS_KEPT = 32


class TemplateTokenizer:
    """A model's tokenizer.json and chat template, as the server applies them."""

    def __init__(self, directory: Path, tokenizer: Any, template: str, special: dict[str, str]) -> None:
        self.directory = directory
        self._tokenizer = tokenizer
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(template)
        self._special = special

    @classmethod
    def find(cls, name: str, cache_dir: Path) -> TemplateTokenizer | None:
        """The tokenizer of model `name` if this machine has it: `name` as a directory, as a prepared
        embedded model in `cache_dir`, or as a Hugging Face id in the local Hub cache. Never downloads."""
        for directory in _candidates(name, cache_dir):
            found = cls.load(directory)
            if found is not None:
                return found
        return None

    @classmethod
    def load(cls, directory: Path) -> TemplateTokenizer | None:
        """The tokenizer in `directory`, or None when it lacks tokenizer.json or a chat template."""
        from tokenizers import Tokenizer

        file = directory / "tokenizer.json"
        if not file.is_file():
            return None
        try:
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        if not isinstance(config, dict):
            config = {}
        template = config.get("chat_template")
        template_file = directory / "chat_template.jinja"
        if template_file.is_file():  # it takes priority over the config's entry, as in transformers
            template = template_file.read_text(encoding="utf-8")
        if not isinstance(template, str):
            return None  # several named templates, or none: the estimate is safer than a guess
        special = {
            key: value["content"] if isinstance(value, dict) else value
            for key, value in config.items()
            if key.endswith("_token") and isinstance(value, str | dict)
        }
        try:
            tokenizer = Tokenizer.from_file(str(file))
            return cls(
                directory, tokenizer, template, {k: v for k, v in special.items() if isinstance(v, str)}
            )
        except (TemplateError, ValueError, OSError) as error:
            log.warning("cannot use the tokenizer in %s (%s); estimating token counts", directory, error)
            return None

    def count_text(self, text: str) -> int:
        """Tokens of a bare piece of text."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count(self, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None) -> int:
        """Tokens of the rendered prompt, generation prompt included; raises TemplateError (and the
        template's own TypeError/KeyError/ValueError) when the template refuses these messages."""
        text = self._template.render(
            messages=messages,
            tools=list(tools) if tools else None,
            add_generation_prompt=True,
            **self._special,
        )
        return self.count_text(text)


class TokenEstimate:
    """Token counts from the size of the text, scaled by what the server reported for earlier prompts."""

    def __init__(self) -> None:
        self._ratios: deque[float] = deque(maxlen=_RATIOS_KEPT)

    @property
    def scale(self) -> float:
        """Tokens per estimated token: the largest recent ratio with a margin (1 until one is seen)."""
        return _MARGIN * max(self._ratios) if self._ratios else 1.0

    def raw_text(self, text: str) -> float:
        """The unscaled estimate of a bare piece of text."""
        return len(text.encode("utf-8")) / _BYTES_PER_TOKEN

    def raw(self, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None) -> float:
        """The unscaled estimate of a prompt."""
        total = _PROMPT_TOKENS + sum(self.raw_text(_content(m)) + _MESSAGE_TOKENS for m in messages)
        if tools:
            total += self.raw_text(json.dumps(list(tools)))
        return total

    def count_text(self, text: str) -> int:
        """Estimated tokens of a bare piece of text."""
        return math.ceil(self.raw_text(text) * self.scale)

    def count(self, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None) -> int:
        """Estimated tokens of a prompt."""
        return math.ceil(self.raw(messages, tools) * self.scale)

    def observe(self, estimated: float, reported: int) -> None:
        """The server counted `reported` tokens for a prompt estimated (unscaled) at `estimated`."""
        if estimated > 0 and reported > 0:
            self._ratios.append(reported / estimated)


def _content(message: dict[str, Any]) -> str:
    """All the text of a wire message: its content and any tool calls in it."""
    text = message.get("content") or ""
    calls = message.get("tool_calls")
    return text + (json.dumps(calls) if calls else "")


def _candidates(name: str, cache_dir: Path) -> list[Path]:
    places: list[Path] = []
    path = Path(name).expanduser()
    if path.is_dir():
        places.append(path)
    places.append(cache_dir / name / "hf")  # an embedded model chinwag has prepared
    if "/" in name and not path.is_absolute():
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "tokenizer.json")
        except ValueError:  # not a valid repository id
            found = None
        if isinstance(found, str):
            places.append(Path(found).parent)
    return [p for p in places if p.is_dir()]


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # As transformers' chat templates have it (Jinja's own escapes HTML).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise(message: str) -> None:
    raise TemplateError(message)
