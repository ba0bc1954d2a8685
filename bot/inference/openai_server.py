"""A model on a model server that speaks the OpenAI-compatible chat API (vLLM, llama.cpp's server,
Ollama, TGI, LM Studio, `transformers serve`), behind the same `ChatModel` seam as the local one.

The engine finds tool calls in the reply's text (`bot.tools.calls`), so native `tool_calls` are
assembled from their streamed deltas and handed on as `<tool_call>{...}</tool_call>` text; going
back, calls written that way and the "tool" messages after them become the API's structured
`tool_calls` and `tool_call_id`s again. A server that refuses `tools` (or the extra sampling
fields top_k and repetition_penalty) is asked again without them, and the model is then told of
the tools in its system message, as chat templates do. The official `openai` client does the
protocol: SSE, retries with backoff (connection failures, timeouts, 429, 5xx) and Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from jinja2 import TemplateError

from bot.errors import ModelServerError
from bot.inference.counting import TemplateTokenizer, TokenEstimate
from bot.seams.model import Chunk, Constrain, Finish, FinishReason, Queued
from bot.tools.calls import parse_tool_calls
from bot.types import ChatMessage, GenerationParams, ModelInfo
from config.settings import ModelSettings

if TYPE_CHECKING:
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)

API_KEY_ENV = "CHINWAG_MODEL_API_KEY"
"""The only place the server's API key is read from."""

# Sent when there is no key: the client insists on one, servers without authentication ignore it.
_NO_KEY = "no-key"
# Fields of a model listing that give its context window (vLLM, OpenRouter/LM Studio, llama.cpp).
_WINDOW_FIELDS = ("max_model_len", "context_length", "max_context_length", "context_window", "n_ctx")
_WINDOW_FIELDS_TRAINED = ("n_ctx_train",)
# Sampling parameters outside the OpenAI API that vLLM and llama.cpp accept in the request body.
_EXTRA_PARAMS = ("top_k", "repetition_penalty")
# How long `load` waits for the model listing: a server that is down must not hold up the start.
_LISTING_TIMEOUT_S = 5.0
# Pauses between attempts of a stream that broke before its first piece (doubling, with jitter).
_BACKOFF_S = 0.5
# How many of the first token's alternatives to ask for (`GenerationParams.watch`): OpenAI's API
# allows up to 20, and a watched opening outside them is too unlikely to matter.
_TOP_LOGPROBS = 20
_TOOLS_HINT = (
    "You can call these tools. To call one, reply with only "
    '<tool_call>{"name": "<tool name>", "arguments": {<arguments as JSON>}}</tool_call>\n'
    "Tools:\n"
)


@dataclass(frozen=True)
class ServedModel:
    """One model a server offers, as its listing describes it."""

    id: str
    context_window: int | None
    owned_by: str | None


def api_key_from(environ: Mapping[str, str]) -> str | None:
    """The model server's API key from the environment (None when unset or blank)."""
    key = environ.get(API_KEY_ENV, "").strip()
    return key or None


def display_url(url: str) -> str:
    """A base URL fit to show and log: without any user:password in it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def list_served(
    settings: ModelSettings, api_key: str | None, timeout_s: float | None = None
) -> list[ServedModel]:
    """The models the configured server offers (GET /models); ModelServerError when it cannot say."""
    from openai import OpenAI, OpenAIError

    assert settings.base_url is not None
    server = display_url(settings.base_url)
    client = OpenAI(
        base_url=settings.base_url,
        api_key=api_key or _NO_KEY,
        timeout=timeout_s or settings.timeout_s,
        max_retries=0 if timeout_s else settings.retries,
    )
    try:
        with client:
            page = client.models.list()
            return [_served(item.to_dict()) for item in page.data]
    except OpenAIError as error:
        raise _failure(server, error, None) from None


class OpenAIServerModel:
    """A `ChatModel` on an OpenAI-compatible server. Closing a stream closes its HTTP response, so
    the server stops generating; the client is made per event loop (its connections belong to one)."""

    def __init__(
        self,
        settings: ModelSettings,
        api_key: str | None,
        context_window: int,
        window_source: str,
        tokenizer: TemplateTokenizer | None = None,
        listed: bool = True,
    ) -> None:
        assert settings.base_url is not None
        self._settings = settings
        self._base_url = settings.base_url
        self.server = display_url(settings.base_url)
        self._api_key = api_key
        self._window = context_window
        self._window_source = window_source
        self._tokenizer = tokenizer
        self._estimate = TokenEstimate()
        self._listed = listed
        # What this server turned out to refuse (learnt from its answers, kept for this model).
        self._refused: set[str] = set()
        self._native_tools = True
        self._template_refused = False  # logged once
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def load(cls, settings: ModelSettings, cache_dir: Path, api_key: str | None) -> OpenAIServerModel:
        """Ask the server for the model's context window (a server that is down now is not fatal:
        the configured window is used and requests retry), and find its tokenizer on this machine."""
        assert settings.base_url is not None
        server = display_url(settings.base_url)
        window, source, listed = settings.context_window, "from the configuration", True
        try:
            served = list_served(settings, api_key, timeout_s=_LISTING_TIMEOUT_S)
        except ModelServerError as error:
            log.warning("%s Using the configured context window, %d tokens.", error, window)
            served = []
        match = next((m for m in served if m.id == settings.name), None)
        if served and match is None:
            listed = False
            log.warning(
                "the model server at %s does not list %r (it lists: %s)",
                server,
                settings.name,
                ", ".join(m.id for m in served),
            )
        if match is not None and match.context_window:
            window, source = match.context_window, "reported by the server"
        tokenizer = TemplateTokenizer.find(settings.name, cache_dir)
        log.info(
            "model %s on the server at %s: context window %d (%s); token counts %s",
            settings.name,
            server,
            window,
            source,
            f"with the tokenizer in {tokenizer.directory}" if tokenizer else "estimated",
        )
        return cls(settings, api_key, window, source, tokenizer, listed)

    @property
    def info(self) -> ModelInfo:
        """Name, server and context window, and what the user should know about this server."""
        notes = [f"context window {self._window_source}"]
        notes.append(
            "prompt tokens counted with the model's tokenizer"
            if self._tokenizer is not None
            else "prompt tokens estimated (no tokenizer for it here), corrected by the server's counts"
        )
        if not self._listed:
            notes.append("the server does not list this model name")
        if self._refused:
            notes.append(f"the server refuses {', '.join(sorted(self._refused))}: not sent")
        if not self._native_tools:
            notes.append("the server has no tool support: tool calls are read from the reply's text")
        return ModelInfo(
            name=self._settings.name,
            device="model server",
            dtype="the server's",
            context_window=self._window,
            server=self.server,
            notes=tuple(notes),
        )

    def close(self) -> None:
        """Nothing to stop: the HTTP connections close with their event loops."""

    async def served(self) -> list[ServedModel]:
        """The models the server offers."""
        return await asyncio.to_thread(list_served, self._settings, self._api_key)

    # Token counts --------------------------------------------------------------------

    def count_tokens(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] | None = None
    ) -> int:
        """Tokens of the prompt these messages (and tool schemas) render to, generation prompt included."""
        wire, schemas = self._wire(messages, tools)
        if self._tokenizer is not None:
            try:
                return self._tokenizer.count(wire, schemas)
            except (TemplateError, TypeError, KeyError, ValueError) as error:
                # A template without tool calls (the server may cope in its own way): count the
                # prompt as plain messages, the tools' schemas as text beside it.
                if not self._template_refused:
                    self._template_refused = True
                    log.warning(
                        "the chat template refused a prompt (%s); counting it as plain messages", error
                    )
            try:
                plain = self._tokenizer.count(plain_messages(messages))
                return plain + (self._tokenizer.count_text(json.dumps(schemas)) if schemas else 0)
            except (TemplateError, TypeError, KeyError, ValueError):
                log.warning("the chat template refused plain messages too; estimating this prompt's tokens")
        return self._estimate.count(wire, schemas)

    def count_text_tokens(self, text: str) -> int:
        """Tokens of a bare piece of text."""
        if self._tokenizer is not None:
            return self._tokenizer.count_text(text)
        return self._estimate.count_text(text)

    # Generation ----------------------------------------------------------------------

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None = None,
        constrain: Constrain = False,
    ) -> AsyncGenerator[Chunk | Finish | Queued, None]:
        """Stream a reply from the server; `constrain` cannot be honoured there and is ignored."""
        from openai import APIConnectionError, APIError, APITimeoutError

        parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        reason: FinishReason = "stop"
        usage: Any = None
        watched: float | None = None
        for attempt in range(self._settings.retries + 1):
            response = await self._open(messages, params, tools)
            try:
                async for chunk in response:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        delta = choice.delta
                        if params.watch and not parts and not calls:
                            watched = _watched(choice, params.watch)
                        if delta.content:
                            parts.append(delta.content)
                            yield Chunk(delta.content)
                        for call in delta.tool_calls or []:
                            _add_delta(calls, call)
                        if choice.finish_reason == "length":
                            reason = "length"
                break
            except APIError as error:
                # A stream whose connection broke before its first piece is tried again; not a reply
                # half-said (the user has seen it), a server that answered with an error in the
                # stream, nor one that is slow (asked again, it would have the work twice).
                midway = bool(parts or calls)
                retry = isinstance(error, APIConnectionError) and not isinstance(error, APITimeoutError)
                if midway or not retry or attempt == self._settings.retries:
                    raise _failure(self.server, error, attempt + 1, midway) from None
                log.warning("the model server at %s broke off a reply (%s); trying again", self.server, error)
                await asyncio.sleep(_BACKOFF_S * 2**attempt * (1 + random.random() / 4))
            finally:
                # Closing the response is what tells the server to stop generating.
                await response.close()
        if calls:
            text = "".join(_call_text(call) for _, call in sorted(calls.items()))
            parts.append(text)
            yield Chunk(text)
        yield replace(self._finish(messages, tools, "".join(parts), usage, reason), watched=watched)

    def _finish(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[dict[str, Any]] | None,
        output: str,
        usage: Any,
        reason: FinishReason,
    ) -> Finish:
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if isinstance(prompt, int) and prompt > 0 and self._tokenizer is None:
            wire, schemas = self._wire(messages, tools)
            self._estimate.observe(self._estimate.raw(wire, schemas), prompt)
        if not isinstance(prompt, int) or prompt <= 0:
            prompt = self.count_tokens(messages, tools)
        if not isinstance(completion, int) or completion < 0:
            completion = self.count_text_tokens(output)
        return Finish(prompt, completion, reason)

    async def _open(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None,
    ) -> Any:
        """Start a streamed completion; a request the server refuses for a field it does not know is
        sent again without that field (remembered for this model). ModelServerError when it fails."""
        from openai import BadRequestError, OpenAIError, UnprocessableEntityError

        client = self._client()
        while True:
            request = self.request_body(messages, params, tools)
            try:
                return await client.chat.completions.create(**request)
            except (BadRequestError, UnprocessableEntityError) as error:
                text = _error_text(error)
                if not self._drop_refused(request, text):
                    raise _failure(self.server, error, None) from None
            except OpenAIError as error:
                raise _failure(self.server, error, self._settings.retries + 1) from None

    def _drop_refused(self, request: dict[str, Any], text: str) -> bool:
        """Learn from a refusal what not to send again; False when it was not about such a field."""
        extra = request.get("extra_body") or {}
        optional = ("stream_options", "seed", "logprobs")
        refused = {name for name in [*extra, *optional] if name in text}
        refused &= {*extra, *(name for name in optional if name in request)}
        if refused:
            self._refused |= refused
            log.warning(
                "the model server at %s refuses %s: sending requests without them from now on (%s)",
                self.server,
                ", ".join(sorted(refused)),
                text,
            )
            return True
        if "tools" in request and "tool" in text.lower():
            self._native_tools = False
            log.warning(
                "the model server at %s refuses tools (%s): tool calls are read from the reply's text",
                self.server,
                text,
            )
            return True
        return False

    def request_body(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        tools: Sequence[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """The body of the streamed chat request for these messages, without what the server refused."""
        wire, schemas = self._wire(messages, tools)
        request: dict[str, Any] = {
            "model": self._settings.name,
            "messages": wire,
            "stream": True,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if "stream_options" not in self._refused:
            request["stream_options"] = {"include_usage": True}
        if params.seed is not None and "seed" not in self._refused:
            request["seed"] = params.seed
        if params.watch and "logprobs" not in self._refused:
            # The first token's likeliest alternatives, to find the watched opening among them.
            request["logprobs"] = True
            request["top_logprobs"] = _TOP_LOGPROBS
        if schemas:
            request["tools"] = list(schemas)
        extra: dict[str, Any] = {}
        if params.top_k > 0:
            extra["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        extra = {k: v for k, v in extra.items() if k not in self._refused}
        if extra:
            request["extra_body"] = extra
        return request

    def _wire(
        self, messages: Sequence[ChatMessage], tools: Sequence[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The messages (and tools) as this server takes them: native tool calls where it has them,
        else the tools described in the system message and tool results as user messages."""
        if tools and self._native_tools:
            return native_messages(messages), list(tools)
        wire = plain_messages(messages)
        if tools:
            hint = _TOOLS_HINT + "\n".join(json.dumps(t.get("function", t)) for t in tools)
            if wire and wire[0]["role"] == "system":
                wire[0] = {"role": "system", "content": f"{wire[0]['content']}\n\n{hint}"}
            else:
                wire.insert(0, {"role": "system", "content": hint})
        return wire, None

    def _client(self) -> AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from openai import AsyncOpenAI

            client = AsyncOpenAI(
                base_url=self._base_url,
                api_key=self._api_key or _NO_KEY,
                timeout=self._settings.timeout_s,
                max_retries=self._settings.retries,
            )
            self._clients[loop] = client
        return client


# Messages on the wire -------------------------------------------------------------------


def native_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages with the engine's text tool calls as `tool_calls`, and the results as "tool"
    messages answering them by id (in order: a result more than calls joins the last one)."""
    wire: list[dict[str, Any]] = []
    pending: list[str] = []
    answered: dict[str, Any] | None = None
    number = 0
    for message in messages:
        if message.role == "tool":
            if pending:
                answered = {"role": "tool", "tool_call_id": pending.pop(0), "content": message.content}
                wire.append(answered)
            elif answered is not None:
                answered["content"] += "\n\n" + message.content
            else:
                wire.append({"role": "user", "content": f"Tool result:\n{message.content}"})
            continue
        wire += [{"role": "tool", "tool_call_id": left, "content": "(no result)"} for left in pending]
        pending, answered = [], None
        if message.role == "assistant":
            parsed = parse_tool_calls(message.content)
            if parsed.calls:
                tool_calls = []
                for call in parsed.calls:
                    number += 1
                    pending.append(f"call_{number}")
                    arguments = (
                        call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
                    )
                    tool_calls.append(
                        {
                            "id": pending[-1],
                            "type": "function",
                            "function": {"name": call.name, "arguments": arguments},
                        }
                    )
                wire.append({"role": "assistant", "content": parsed.text or None, "tool_calls": tool_calls})
                continue
        wire.append({"role": message.role, "content": message.content})
    wire += [{"role": "tool", "tool_call_id": left, "content": "(no result)"} for left in pending]
    return wire


def plain_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages for a server without tool support: tool results as user messages."""
    return [
        {"role": "user", "content": f"Tool result:\n{m.content}"}
        if m.role == "tool"
        else {"role": m.role, "content": m.content}
        for m in messages
    ]


def _add_delta(calls: dict[int, dict[str, str]], delta: Any) -> None:
    """Fold one streamed piece of a tool call into the call it belongs to (by index)."""
    call = calls.setdefault(delta.index or 0, {"name": "", "arguments": ""})
    function = delta.function
    if function is not None:
        call["name"] += function.name or ""
        call["arguments"] += function.arguments or ""


def _call_text(call: dict[str, str]) -> str:
    """A native call in the form the engine parses (arguments that are not JSON are left a string)."""
    try:
        arguments: Any = json.loads(call["arguments"]) if call["arguments"].strip() else {}
    except ValueError:
        arguments = call["arguments"]
    return f"<tool_call>{json.dumps({'name': call['name'], 'arguments': arguments})}</tool_call>"


# Listing and failures -------------------------------------------------------------------


def _served(item: dict[str, Any]) -> ServedModel:
    return ServedModel(str(item.get("id", "")), _window_of(item), item.get("owned_by"))


def _window_of(item: dict[str, Any]) -> int | None:
    """The context window a model listing reports, if any (the running one before the trained one)."""
    places = [item, *(v for v in item.values() if isinstance(v, dict))]
    for fields in (_WINDOW_FIELDS, _WINDOW_FIELDS_TRAINED):
        for place in places:
            for name in fields:
                value = place.get(name)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


def _error_text(error: Exception) -> str:
    """The server's own words about a refused request, on one line."""
    body = getattr(error, "body", None)
    text = ""
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("message") or body.get("error") or body
        text = detail.get("message", json.dumps(detail)) if isinstance(detail, dict) else str(detail)
    text = " ".join((text or str(error)).split())
    return text if len(text) <= 300 else text[:299] + "…"


def _failure(server: str, error: Exception, tries: int | None, midway: bool = False) -> ModelServerError:
    """One line for the user: what the server did (or did not do); `midway`: after part of a reply."""
    from openai import APIConnectionError, APIStatusError, APITimeoutError, RateLimitError

    after = f" (tried {tries} times)" if tries and tries > 1 else ""
    if midway:
        after = ""
    if midway and isinstance(error, APIConnectionError):
        reason = "the connection broke off in the middle of the reply"
    elif isinstance(error, APITimeoutError):
        reason = "it did not answer in time"
    elif isinstance(error, APIConnectionError):
        cause = error.__cause__ or error.__context__
        reason = f"cannot connect ({_short(cause)})" if cause else "cannot connect"
    elif isinstance(error, RateLimitError):
        reason = "it is busy (HTTP 429 Too Many Requests)"
    elif isinstance(error, APIStatusError):
        if error.status_code < 500:
            status = f"HTTP {error.status_code}: {_error_text(error)}"
            return ModelServerError(f"The model server at {server} refused the request: {status}")
        reason = f"HTTP {error.status_code}: {_error_text(error)}"
    else:
        reason = _error_text(error)
    return ModelServerError(f"The model server at {server} did not answer: {reason}{after}.")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:159] + "…"


def _watched(choice: Any, watch: str) -> float | None:
    """The log-probability the server gave the first token of `watch` as the reply's first token,
    from the stream's first piece with log-probabilities (None: not among them, or none sent)."""
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) or []
    if not content:
        return None
    first = content[0]
    opening = watch.split()[0] if watch.split() else ""
    for alternative in [first, *(getattr(first, "top_logprobs", None) or [])]:
        token = (getattr(alternative, "token", "") or "").strip()
        # The whole first word: "No" opens "No, ..." as often as "Not in the documents".
        if token == opening and isinstance(getattr(alternative, "logprob", None), float):
            return float(alternative.logprob)
    return None
