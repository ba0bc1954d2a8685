"""The wiring: builds the model, the history store and the engine from Settings, and tears them down."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler

from bot.engine import Engine
from bot.errors import ChinwagError
from bot.inference import load_model
from bot.seams.history import History
from bot.seams.model import ChatModel
from bot.seams.retriever import Retriever
from bot.tools.builtin import builtin_tools
from bot.tools.http import http_tool
from bot.tools.registry import ToolRegistry, tools_from_entry_points, tools_from_module
from config import Settings

log = logging.getLogger(__name__)

ModelFactory = Callable[[Settings], ChatModel]


def configure_logging(settings: Settings) -> None:
    """Log to a rotating file: the terminal belongs to the chat."""
    path = settings.log_file
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFileHandler(path, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_chinwag", False):
            root.removeHandler(old)
    handler._chinwag = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.logging.level)
    # Libraries that print to the terminal go through logging or stay quiet.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.captureWarnings(True)


async def open_history(settings: Settings) -> History:
    """Open the history store named by the settings and bring its schema up to date."""
    from storage import SqlHistory

    return await SqlHistory.open(settings)


async def open_retriever(settings: Settings) -> Retriever | None:
    """The document store, or None when retrieval is off. A store that cannot open is logged, not fatal."""
    if not settings.retrieval.enabled:
        return None
    from retrieval.store import DocumentStore, RetrievalError

    try:
        return await asyncio.to_thread(DocumentStore.open, settings)
    except RetrievalError as error:
        log.error("document search is off: %s", error)
        return None


def default_tools(settings: Settings | None = None) -> ToolRegistry:
    """The built-in tools and the operator's (which ones a conversation gets is decided per turn)."""
    registry = ToolRegistry()
    for tool in builtin_tools():
        registry.add(tool)
    if settings is not None and (http := http_tool(settings.tools)) is not None:
        registry.add(http)
    for module in settings.tools.modules if settings else []:
        for tool in tools_from_module(module):
            try:
                registry.add(tool)
            except ValueError as error:
                raise ChinwagError(f"tools.modules: {module}: {error}") from None
    for tool in tools_from_entry_points():
        try:
            registry.add(tool)
        except ValueError as error:
            raise ChinwagError(f"tool entry points: {error}") from None
    if settings is not None:
        # A misspelt tool name in a scope's list would silently switch that tool off there.
        known = set(registry.tools) | {"search_documents"}
        for scope, enabled in settings.tools.scopes.items():
            for name in enabled if isinstance(enabled, list) else []:
                if name not in known:
                    raise ChinwagError(
                        f"tools.scopes.{scope}: there is no tool named {name!r}; "
                        f"the tools are: {', '.join(sorted(known))}"
                    )
    return registry


@dataclass
class App:
    """Everything one chinwag process runs on."""

    settings: Settings
    model: ChatModel
    history: History
    engine: Engine
    retriever: Retriever | None = None


@asynccontextmanager
async def running(
    settings: Settings, model: ChatModel | None = None, progress: bool = True
) -> AsyncIterator[App]:
    """Start the parts (history first: a bad database URL fails before a minute of model loading)."""
    history = await open_history(settings)
    owned = model is None
    try:
        if model is None:
            model = await asyncio.to_thread(load_model, settings, progress)
        retriever = await open_retriever(settings)
        engine = Engine(model, history, settings, retriever, default_tools(settings))
        log.info("started: model=%s window=%s docs=%s", model.info.name, engine.window, retriever is not None)
        yield App(settings, model, history, engine, retriever)
    finally:
        await history.close()
        # Stop the model's worker between two steps: a process that exits while it is inside a
        # forward pass is aborted by the C++ runtime instead of exiting cleanly.
        close = getattr(model, "close", None) if owned else None
        if close is not None:
            await asyncio.to_thread(close)
