"""The wiring: builds the model, the history store and the engine from Settings, and tears them down."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

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


# chinwag's own loggers; with `logging.message_text` off, records of other libraries below INFO
# (SQL parameters, platform payloads) are dropped: they hold what people wrote.
_OWN_LOGGERS = {"bot", "adapters", "retrieval", "storage", "config", "py"}
# Libraries that log request URLs at INFO, and a URL may carry conversation text.
_URL_LOGGERS = {"httpx", "httpcore", "urllib3"}
_SQLITE_HEADER = b"SQLite format 3\x00"


class PrivateTextFilter(logging.Filter):
    """Keeps message text out of the log file unless `logging.message_text` is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Let chinwag's own records through; libraries' only from INFO (WARNING for URLs) up."""
        top = record.name.split(".", 1)[0]
        if top in _OWN_LOGGERS:
            return True
        return record.levelno >= (logging.WARNING if top in _URL_LOGGERS else logging.INFO)


class PrivateFileHandler(RotatingFileHandler):
    """A rotating log file that only its owner can read (0600), rotated files included."""

    def _open(self) -> Any:
        descriptor = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(descriptor, self.mode, encoding=self.encoding, errors=self.errors)


def private_dir(path: Path, what: str) -> Path:
    """Create `path` (and parents) readable by its owner only (0700) if missing; one-line errors."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise ChinwagError(f"The {what} {path} is a file, not a directory.") from None
    except OSError as error:
        raise ChinwagError(f"Cannot create the {what} {path}: {error.strerror or error}.") from None
    if not path.is_dir():
        raise ChinwagError(f"The {what} {path} is not a directory.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ChinwagError(f"The {what} {path} is not writable.")
    return path


def configure_logging(settings: Settings) -> None:
    """Log to a rotating file: the terminal belongs to the chat. Creates the data directory."""
    private_dir(settings.resolved_data_dir, "data directory")
    path = settings.log_file
    private_dir(path.parent, "log directory")
    try:
        handler = PrivateFileHandler(path, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    except OSError as error:
        raise ChinwagError(f"Cannot write the log file {path}: {error.strerror or error}.") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not settings.logging.message_text:
        handler.addFilter(PrivateTextFilter())
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


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database file the settings name, or None (another database, or in memory)."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        return None  # the store says what is wrong with the URL
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or url.query.get("uri"):
        return None
    return Path(database).expanduser()


def prepare_sqlite_file(path: Path) -> None:
    """Create the database file only its owner can read (0600); refuse a file that is not SQLite.

    An empty file is a valid empty SQLite database (SQLite writes its header on first use).
    """
    private_dir(path.parent, "database directory")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise ChinwagError(f"Cannot create the database {path}: {error.strerror or error}.") from None
    else:
        os.close(descriptor)
        return
    try:
        with path.open("rb") as existing:
            header = existing.read(len(_SQLITE_HEADER))
    except OSError as error:
        raise ChinwagError(f"Cannot read the database {path}: {error.strerror or error}.") from None
    if header and header != _SQLITE_HEADER:
        raise ChinwagError(
            f"{path} is not an SQLite database: move it away, or set storage.url to another file."
        )


async def open_history(settings: Settings) -> History:
    """Open the history store named by the settings and bring its schema up to date."""
    from storage import SqlHistory

    if (path := sqlite_file(settings)) is not None:
        prepare_sqlite_file(path)
    return await SqlHistory.open(settings)


async def open_retriever(settings: Settings) -> Retriever | None:
    """The document store, or None when retrieval is off. An embedded store that cannot open is
    logged, not fatal; a Chroma server that does not answer yet is asked again at each search;
    settings that cannot work (a secret not set) raise ConfigError."""
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
        # Before the model, for the same reason: a Chroma secret not set fails at once.
        retriever = await open_retriever(settings)
        if model is None:
            model = await asyncio.to_thread(load_model, settings, progress)
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
