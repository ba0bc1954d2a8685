"""Fakes at the engine's seams: a model that replays scripted replies."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.seams.model import Chunk, Finish, Queued
from bot.types import ChatMessage, GenerationParams, ModelInfo


@dataclass
class Script:
    """One scripted reply: its chunks, an optional pause per chunk, an optional failure.

    `queued`: places in the scheduler's queue reported before the first chunk (each followed by
    the same pause), as a busy `TransformersModel` reports them.
    """

    chunks: list[str]
    delay: float = 0.0
    error: Exception | None = None
    error_after: int | None = None
    queued: tuple[int, ...] = ()


@dataclass
class FakeModel:
    """A ChatModel that replays enqueued replies; one token per whitespace-separated word.

    `responder`, when set, answers prompts it recognises (return None to fall through to the
    queue); `before_stream` runs before each reply, to observe state at that moment.
    """

    context_window: int = 4096
    name: str = "fake-model"
    queue: deque[Script] = field(default_factory=deque)
    prompts: list[list[ChatMessage]] = field(default_factory=list)
    params: list[GenerationParams] = field(default_factory=list)
    responder: Callable[[list[ChatMessage]], list[str] | None] | None = None
    before_stream: Callable[[], Awaitable[None]] | None = None
    cancelled: int = 0
    tools: list[list[dict[str, Any]] | None] = field(default_factory=list)
    constrained: list[bool] = field(default_factory=list)
    # A one-token request that watches an opening (`GenerationParams.watch`, the engine asking how
    # readily the model would decline) is answered with `leaning` as `Finish.watched`; it takes
    # nothing from the queue and is kept in `scored`, not in `prompts`.
    leaning: float | None = None
    scored: list[list[ChatMessage]] = field(default_factory=list)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, "cpu", "float32", self.context_window)

    def enqueue(
        self,
        *chunks: str,
        delay: float = 0.0,
        error: Exception | None = None,
        error_after: int | None = None,
        queued: tuple[int, ...] = (),
    ) -> None:
        self.queue.append(Script(list(chunks), delay, error, error_after, queued))

    def count_text_tokens(self, text: str) -> int:
        return len(text.split())

    def count_tokens(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        # "<|im_start|>role\n" + content + "<|im_end|>\n" per message, plus the generation prompt;
        # tool schemas cost their JSON's words.
        schemas = sum(self.count_text_tokens(json.dumps(t)) for t in tools or [])
        return sum(self.count_text_tokens(m.content) + 3 for m in messages) + 2 + schemas

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: bool = False,
    ) -> AsyncGenerator[Chunk | Finish | Queued, None]:
        prompt = list(messages)
        if params.watch is not None and params.max_tokens == 1:
            self.scored.append(prompt)
            yield Finish(self.count_tokens(prompt), 1, "length", self.leaning)
            return
        self.constrained.append(constrain)
        self.prompts.append(prompt)
        self.params.append(params)
        self.tools.append(list(tools) if tools else None)
        if self.before_stream is not None:
            await self.before_stream()
        answer = self.responder(prompt) if self.responder else None
        script = (
            Script(answer) if answer is not None else (self.queue.popleft() if self.queue else Script(["ok"]))
        )
        produced = 0
        try:
            for position in script.queued:
                yield Queued(position)
                if script.delay:
                    await asyncio.sleep(script.delay)
            for chunk in script.chunks:
                if script.error is not None and script.error_after == produced:
                    raise script.error
                if produced >= params.max_tokens:
                    yield Finish(self.count_tokens(prompt), produced, "length")
                    return
                if script.delay:
                    await asyncio.sleep(script.delay)
                produced += 1
                yield Chunk(chunk)
            if script.error is not None:
                raise script.error
            yield Finish(self.count_tokens(prompt), produced, "stop")
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
