"""The `chinwag` command: chat, ask, serve, history, ingest, docs, models, prepare; the composition root."""

from __future__ import annotations

import asyncio
import errno
import getpass
import json
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from bot import inference
from bot.app import App, configure_logging, open_history, running
from bot.citations import documents_notice, source_label, sources_footer
from bot.cli_tasks import register as register_tasks
from bot.engine import new_thread_id
from bot.errors import ChinwagError, RetrievalError
from bot.seams.history import Conversation, History, StoredMessage
from bot.text import read_bytes_as_text
from bot.types import CommandResult, Incoming, TextDelta, ToolCall, TurnDone, TurnFailed
from config import Settings, load_settings

T = TypeVar("T")
err = Console(stderr=True, highlight=False)


class ConversationIdType(click.ParamType):
    """A conversation id: a whole number that fits the database's 64-bit ids."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """The id as an int; anything else is a one-line usage error."""
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a conversation id (a number).", param, ctx)
        if not -(2**63) <= number < 2**63:
            self.fail(f"no conversation has the id {number} (see: chinwag history list).", param, ctx)
        return number


CONVERSATION_ID = ConversationIdType()


class Context:
    """What the group options give every subcommand: how to read the settings."""

    def __init__(self, config_file: Path | None, data_dir: Path | None) -> None:
        self.config_file = config_file
        self.data_dir = data_dir

    def settings(self, **overrides: Any) -> Settings:
        """Settings with the CLI flags on top (flags not given do not override anything)."""
        try:
            settings = load_settings(self.config_file, data_dir=self.data_dir, **overrides)
            configure_logging(settings)
        except ChinwagError as error:
            raise click.ClickException(str(error)) from None
        return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; our errors become one line on stderr and a non-zero exit."""
    try:
        return asyncio.run(coro)
    except ChinwagError as error:
        raise click.ClickException(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: CHINWAG_CONFIG, else the shipped config/chinwag.toml).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory (default: CHINWAG_DATA_DIR, else the user data dir).",
)
@click.version_option(package_name="chinwag")
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, data_dir: Path | None) -> None:
    """chinwag: a chatbot with its own local model, for the terminal, Slack and Discord."""
    ctx.obj = Context(config_file, data_dir)


def _model_overrides(model: str | None, system: str | None, temperature: float | None) -> dict:
    return {
        "model": {"name": model},
        "chat": {"system_prompt": system},
        "generation": {"temperature": temperature},
    }


# chat -----------------------------------------------------------------------------------


@main.command()
@click.option(
    "--resume",
    "resume",
    is_flag=False,
    flag_value="last",
    default=None,
    metavar="[ID]",
    help="Continue the last terminal conversation, or conversation ID.",
)
@click.option("--system", help="System prompt (persona) for this session's conversations.")
@click.option("--temperature", type=float, help="Sampling temperature (0-2).")
@click.option("--model", help="Model: embedded name, local path or Hugging Face id.")
@click.pass_obj
def chat(
    obj: Context,
    resume: str | None,
    system: str | None,
    temperature: float | None,
    model: str | None,
) -> None:
    """Chat in the terminal."""
    settings = obj.settings(**_model_overrides(model, system, temperature))
    _run(_chat(settings, resume))


async def _chat(settings: Settings, resume: str | None) -> None:
    from adapters.repl import Repl, Session

    console = Console(highlight=False)
    template = Incoming(
        text="",
        platform="terminal",
        scope="local",
        channel="repl",
        thread=new_thread_id(),
        user_id=getpass.getuser(),
    )
    # Resolve --resume before loading the model: a bad id should not cost a model load.
    history = await open_history(settings)
    try:
        resumed = await _find_resume(history, resume)
    finally:
        await history.close()
    if resumed is not None:
        template = Incoming(**{**asdict(template), "conversation_id": resumed.id})

    # The first time, preparing the model shows its own progress bars; later it returns at once.
    await asyncio.to_thread(inference.prepare_weights, settings, True)
    with console.status(f"[dim]Loading {settings.model.name}…[/dim]"):
        model = await asyncio.to_thread(inference.load_model, settings, False)
    async with running(settings, model=model) as app:
        session = Session(template, app.model.info.name)
        repl = Repl(app.engine, session, settings.resolved_data_dir / "repl_history")
        await repl.run(_greeting(app, resumed))
        if session.conversation_id is not None:
            console.print(
                f"[dim]Conversation #{session.conversation_id} is saved: "
                f"chinwag chat --resume {session.conversation_id}[/dim]"
            )


async def _find_resume(history: History, resume: str | None) -> Conversation | None:
    if resume is None:
        return None
    if resume == "last":
        found = await history.latest("terminal")
        if found is None:
            err.print("[yellow]No terminal conversation to resume; starting a new one.[/yellow]")
        return found
    try:
        conversation_id = CONVERSATION_ID.convert(resume, None, None)
    except click.BadParameter as error:
        raise ChinwagError(f"--resume takes a conversation id: {error.message}") from None
    found = await history.get(conversation_id)
    if found is None:
        raise ChinwagError(f"No conversation #{conversation_id} (see: chinwag history list).")
    return found


def _greeting(app: App, resumed: Conversation | None) -> str:
    info = app.model.info
    lines = [
        f"**chinwag** · {info.name} on {info.device} · context {app.engine.window} tokens",
        "",
        "Enter sends · Esc Enter (or Ctrl-J) for a new line · Ctrl-C stops a reply · "
        "`/help` for commands · Ctrl-D or `/exit` leaves",
    ]
    if resumed is not None:
        title = f": {resumed.title}" if resumed.title else ""
        lines += ["", f"Resuming conversation #{resumed.id}{title}"]
    return "\n".join(lines)


# ask ------------------------------------------------------------------------------------


@main.command()
@click.argument("question")
@click.option(
    "--conversation",
    "conversation_id",
    type=CONVERSATION_ID,
    help="Continue conversation ID instead of starting a new one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option("--system", help="System prompt (persona).")
@click.option("--temperature", type=float, help="Sampling temperature (0-2).")
@click.option("--model", help="Model: embedded name, local path or Hugging Face id.")
@click.pass_obj
def ask(
    obj: Context,
    question: str,
    conversation_id: int | None,
    as_json: bool,
    system: str | None,
    temperature: float | None,
    model: str | None,
) -> None:
    """Ask one question ('-' reads it from stdin) and print the answer."""
    if question == "-":
        # Bytes, not text: invalid UTF-8 must reach the engine (which repairs and keeps it), not
        # fail here. Arguments already arrive that way (Python decodes argv with surrogateescape).
        question = read_bytes_as_text(sys.stdin.buffer.read())
    settings = obj.settings(**_model_overrides(model, system, temperature))
    code = _run(_ask(settings, question, conversation_id, as_json))
    sys.exit(code)


async def _ask(settings: Settings, question: str, conversation_id: int | None, as_json: bool) -> int:
    incoming = Incoming(
        text=question,
        platform="cli",
        scope="local",
        channel="ask",
        thread=new_thread_id(),
        user_id=getpass.getuser(),
        conversation_id=conversation_id,
    )
    if not question.strip():
        err.print("chinwag: the question is empty.")
        return 2
    async with running(settings) as app:
        if conversation_id is not None and await app.history.get(conversation_id) is None:
            err.print(f"chinwag: no conversation #{conversation_id}.")
            return 1
        out = sys.stdout
        async with aclosing(app.engine.handle(incoming)) as events:
            async for event in events:
                if isinstance(event, TextDelta) and not as_json:
                    out.write(event.text)
                    out.flush()
                elif isinstance(event, ToolCall) and not as_json:
                    err.print(f"[dim]⚙ {event.summary()}[/dim]", highlight=False)
                elif isinstance(event, TurnDone):
                    sources = event.metadata.get("sources") or []
                    notice = documents_notice(event.metadata)
                    if as_json:
                        result: dict[str, Any] = {
                            "conversation_id": event.conversation_id,
                            "text": event.text,
                            "prompt_tokens": event.usage.prompt_tokens,
                            "completion_tokens": event.usage.completion_tokens,
                            "latency_ms": event.usage.latency_ms,
                            "model": event.model,
                            "sources": await _source_details(app, sources),
                            "tool_calls": event.metadata.get("tool_calls", []),
                            # "on", "off" (/docs off, retrieval off), or "unavailable" (the store
                            # did not answer: this answer is without documents).
                            "documents": event.metadata.get(
                                "documents", "on" if "sources" in event.metadata else "off"
                            ),
                        }
                        # The reply said the documents do not hold the answer: those searched,
                        # and what the check of the reply against them found.
                        for key in ("searched", "grounding"):
                            if key in event.metadata:
                                result[key] = event.metadata[key]
                        print(json.dumps(result, ensure_ascii=False))
                    else:
                        out.write("\n")
                        if footer := sources_footer(sources):
                            out.write(f"\n{footer}\n")
                        if notice:
                            out.write(f"\n({notice})\n")
                    return 0
                elif isinstance(event, CommandResult):
                    if as_json:
                        print(
                            json.dumps(
                                {
                                    "conversation_id": event.conversation_id,
                                    "text": event.text,
                                    "ok": event.ok,
                                }
                            )
                        )
                    else:
                        print(event.text)
                    return 0 if event.ok else 1
                elif isinstance(event, TurnFailed):
                    if not as_json:
                        out.write("\n")
                    err.print(f"chinwag: {event.message}")
                    return 1
    err.print("chinwag: no answer.")
    return 1


async def _source_details(app: App, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sources of a reply with their passage text, for `ask --json`."""
    texts: dict[str, str] = {}
    if sources and app.retriever is not None:
        try:
            texts = {p.id: p.text for p in await app.retriever.get([s["id"] for s in sources])}
        except RetrievalError as error:  # gone since the search: the sources without their text
            logging.getLogger(__name__).warning("the sources' text is unavailable: %s", error)
    return [
        {
            "id": s["id"],
            "n": s["n"],
            "title": s["title"],
            "path": s["path"],
            "location": s["location"],
            "score": s["score"],
            "cited": s.get("cited", False),
            "text": texts.get(s["id"], ""),
        }
        for s in sources
    ]


# serve ----------------------------------------------------------------------------------

# The chat platforms `serve` knows: each is a module with `check(settings)` (raises ChinwagError
# when the platform cannot run here, e.g. a token missing from the environment) and
# `async def run(app, stop)` (serves until `stop` is set, then lets answers in flight finish).
PLATFORMS: dict[str, str] = {"slack": "adapters.slack", "discord": "adapters.discord"}


@main.command()
@click.option("--slack", "only", flag_value="slack", multiple=True, help="Serve Slack.")
@click.option("--discord", "only", flag_value="discord", multiple=True, help="Serve Discord.")
@click.option("--model", help="Model: embedded name, local path or Hugging Face id.")
@click.pass_obj
def serve(obj: Context, only: tuple[str, ...], model: str | None) -> None:
    """Serve the chat platforms: those named, else every one configured in the environment."""
    settings = obj.settings(**_model_overrides(model, None, None))
    _run(_serve(settings, list(only)))


async def _serve(settings: Settings, only: list[str]) -> None:
    import importlib
    import logging
    import signal

    from adapters.inflight import ShutdownPlan

    chosen: list[tuple[str, Any]] = []
    problems: list[str] = []
    for name in only or list(PLATFORMS):
        module = importlib.import_module(PLATFORMS[name])
        try:
            module.check(settings)
        except ChinwagError as error:
            problems.append(str(error))
            continue
        chosen.append((name, module))
    # Checked before the model loads: a missing token should not cost a minute of loading.
    if (only and problems) or not chosen:
        raise ChinwagError(" ".join(problems) or "No platform to serve.")

    stop = asyncio.Event()
    started = asyncio.Event()  # the model is loaded: the platforms start
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    serving = asyncio.create_task(_serve_platforms(settings, chosen, stop, started))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not serving.done():
        # Asked to stop: the platforms end within their shutdown timeout, whatever their state. While
        # the model loads nothing is in flight, and the load cannot be interrupted: it is left behind.
        timeout_s = max(getattr(settings, name).shutdown_timeout_s for name, _ in chosen)
        plan = ShutdownPlan(timeout_s)
        if not started.is_set():
            serving.cancel()
        await asyncio.wait({serving}, timeout=plan.left(plan.ends_by))
        if not serving.done():
            message = f"chinwag: could not stop within {timeout_s:g} s; exiting anyway."
            logging.getLogger(__name__).error(message)
            err.print(message)
            _exit_now(1)
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(number)
    if not serving.cancelled():
        serving.result()  # a platform that failed: its error, as one line
    err.print("chinwag: stopped.")
    _exit_now(0)


async def _serve_platforms(
    settings: Settings, chosen: list[tuple[str, Any]], stop: asyncio.Event, started: asyncio.Event
) -> None:
    """Start the app, then serve the platforms (and the monitor) until `stop` is set."""
    async with running(settings) as app:
        started.set()
        names = ", ".join(name for name, _ in chosen)
        err.print(f"chinwag: serving {names} with {app.model.info.name}; Ctrl-C or SIGTERM stops.")

        async def guarded(module: Any) -> None:
            try:
                await module.run(app, stop)
            finally:
                # One platform down takes the process down (a supervisor restarts it whole).
                stop.set()

        from bot.monitor import start_monitor

        monitor = start_monitor(app, stop)
        results = await asyncio.gather(*(guarded(m) for _, m in chosen), return_exceptions=True)
        if monitor is not None:
            stop.set()
            await asyncio.gather(monitor, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def _exit_now(code: int) -> NoReturn:
    """End the process at once, all stored and closed: the interpreter's own teardown (freeing the
    model and its thread pools, waiting for a model load left behind) takes seconds more than a
    supervisor's stop timeout allows."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# history --------------------------------------------------------------------------------


@main.group()
def history() -> None:
    """List, show, export and delete stored conversations."""


def _with_history(obj: Context, work: Callable[[History], Coroutine[Any, Any, T]]) -> T:
    settings = obj.settings()

    async def go() -> T:
        store = await open_history(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    return _run(go())


async def _require(store: History, conversation_id: int) -> Conversation:
    found = await store.get(conversation_id)
    if found is None:
        raise ChinwagError(f"No conversation #{conversation_id} (see: chinwag history list).")
    return found


@history.command("list")
@click.option("--platform", help="Only this platform (terminal, cli, slack, discord).")
@click.option("--limit", default=50, show_default=True, help="How many to show.")
@click.pass_obj
def history_list(obj: Context, platform: str | None, limit: int) -> None:
    """Conversations, most recent first."""
    from rich.table import Table

    conversations = _with_history(obj, lambda s: s.list(platform=platform, limit=limit))
    if not conversations:
        click.echo("No conversations yet.")
        return
    table = Table(box=None, header_style="bold")
    for column in ("id", "platform", "title", "messages", "updated"):
        table.add_column(column, justify="right" if column in ("id", "messages") else "left")
    for conv in conversations:
        title = (conv.title or "(untitled)") + (" [dim](archived)[/dim]" if conv.archived else "")
        table.add_row(
            str(conv.id),
            conv.key.platform,
            title,
            str(conv.message_count),
            conv.updated_at.astimezone().strftime("%Y-%m-%d %H:%M"),
        )
    Console(highlight=False).print(table)


@history.command("show")
@click.argument("conversation_id", type=CONVERSATION_ID)
@click.pass_obj
def history_show(obj: Context, conversation_id: int) -> None:
    """Print a conversation."""
    from rich.markdown import Markdown

    async def work(store: History) -> tuple[Conversation, list[StoredMessage]]:
        conv = await _require(store, conversation_id)
        return conv, await store.load(conv.id)

    conv, messages = _with_history(obj, work)
    Console(highlight=False).print(Markdown(to_markdown(conv, messages)))


@history.command("export")
@click.argument("conversation_id", type=CONVERSATION_ID)
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite the --output file if it exists.")
@click.pass_obj
def history_export(obj: Context, conversation_id: int, fmt: str, output: Path | None, force: bool) -> None:
    """Export a conversation as Markdown or JSON."""
    if output is not None and output.is_file() and not force:
        raise click.ClickException(f"{output} exists; add --force to overwrite it.")

    async def work(store: History) -> tuple[Conversation, list[StoredMessage]]:
        conv = await _require(store, conversation_id)
        return conv, await store.load(conv.id)

    conv, messages = _with_history(obj, work)
    if fmt == "json":
        text = json.dumps(to_json(conv, messages), indent=2, ensure_ascii=False) + "\n"
    else:
        text = to_markdown(conv, messages)
    if output:
        try:
            write_file(output, text, force)
        except FileExistsError:
            raise click.ClickException(f"{output} exists; add --force to overwrite it.") from None
        except OSError as error:
            raise click.ClickException(f"Cannot write {output}: {error.strerror or error}.") from None
        err.print(f"Wrote {output}")
    else:
        click.echo(text, nl=False)


@history.command("delete")
@click.argument("conversation_id", type=CONVERSATION_ID)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def history_delete(obj: Context, conversation_id: int, yes: bool) -> None:
    """Delete a conversation and its messages."""
    if not yes and sys.stdin.isatty():
        click.confirm(f"Delete conversation #{conversation_id} and all its messages?", abort=True)
    deleted = _with_history(obj, lambda s: s.delete(conversation_id))
    if not deleted:
        raise click.ClickException(f"No conversation #{conversation_id}.")
    click.echo(f"Deleted conversation #{conversation_id}.")


def write_file(path: Path, text: str, overwrite: bool) -> None:
    """Write `text` to `path` whole or not at all, readable by its owner only (it holds a
    conversation). A device or pipe (/dev/stdout) is written as it is."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with path.open("w", encoding="utf-8") as target:
            target.write(text)
        return
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as target:
            target.write(text)
        if not overwrite:
            try:
                os.link(temporary, path)  # fails if the file appeared meanwhile: never overwrite it
                return
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def to_json(conv: Conversation, messages: list[StoredMessage]) -> dict[str, Any]:
    """A conversation and its messages as plain JSON data."""

    def when(value: Any) -> Any:
        return value.isoformat() if hasattr(value, "isoformat") else value

    return {
        "id": conv.id,
        "platform": conv.key.platform,
        "scope": conv.key.scope,
        "channel": conv.key.channel,
        "thread": conv.key.thread,
        "title": conv.title,
        "settings": conv.settings,
        "summary": conv.summary,
        "summary_until": conv.summary_until,
        "archived": conv.archived,
        "created_at": when(conv.created_at),
        "updated_at": when(conv.updated_at),
        "messages": [
            {
                "id": m.id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "user": asdict(m.user) if m.user else None,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                "latency_ms": m.latency_ms,
                "model": m.model,
                "metadata": m.metadata,
                "created_at": when(m.created_at),
            }
            for m in messages
        ],
    }


def to_markdown(conv: Conversation, messages: list[StoredMessage]) -> str:
    """A conversation as a readable Markdown transcript."""
    lines = [
        f"# Conversation #{conv.id}: {conv.title or '(untitled)'}",
        "",
        f"- platform: {conv.key.platform}, scope: {conv.key.scope}, channel: {conv.key.channel}"
        + (f", thread: {conv.key.thread}" if conv.key.thread else ""),
        f"- started {conv.created_at.astimezone():%Y-%m-%d %H:%M}, "
        f"last message {conv.updated_at.astimezone():%Y-%m-%d %H:%M}",
    ]
    if conv.summary:
        lines += ["", "> **Summary of older turns:** " + " ".join(conv.summary.split())]
    for m in messages:
        who = "You" if m.role == "user" else ("chinwag" if m.role == "assistant" else m.role)
        details = [f"{m.created_at.astimezone():%H:%M:%S}"]
        if m.role == "assistant":
            if m.model:
                details.append(m.model)
            if m.completion_tokens is not None:
                details.append(f"{m.completion_tokens} tokens")
            if m.latency_ms is not None:
                details.append(f"{m.latency_ms / 1000:.1f} s")
        if m.status != "complete":
            details.append(m.status)
        lines += ["", f"## {who} · {' · '.join(details)}", "", m.content or "_(no text)_"]
    return "\n".join(lines) + "\n"


# ingest and docs -------------------------------------------------------------------------


@contextmanager
def _store_errors() -> Iterator[None]:
    """The document store's errors (a Chroma server down, a secret not set) as one line, status 1."""
    try:
        yield
    except ChinwagError as error:
        raise click.ClickException(str(error)) from None


def _open_store(settings: Settings) -> Any:
    from retrieval.store import DocumentStore

    with _store_errors():
        store = DocumentStore.open(settings)
        store.connect()  # a server that is down: say so now, not halfway through
        return store


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--scope", default="global", show_default=True, help="Who may see these documents.")
@click.pass_obj
def ingest(obj: Context, paths: tuple[Path, ...], scope: str) -> None:
    """Ingest files and folders (Markdown, text, HTML, PDF, source code) into the document store."""
    settings = obj.settings()
    store = _open_store(settings)
    progress = _IngestBars()
    try:
        with _store_errors():
            report = store.ingest([p.expanduser() for p in paths], scope=scope, progress=progress)
    finally:
        progress.close()
    for path, reason in report.skipped:
        err.print(f"[yellow]skipped[/yellow] {path}: {reason}")
    rate = report.chunks / report.seconds if report.seconds and report.chunks else 0.0
    click.echo(
        f"{len(report.added)} added, {len(report.updated)} updated, {len(report.unchanged)} unchanged, "
        f"{len(report.skipped)} skipped; {report.chunks} chunks in {report.seconds:.1f} s"
        + (f" ({rate:.0f} chunks/s)" if rate else "")
        + f"; scope {scope}"
    )
    if report.skipped and not (report.added or report.updated or report.unchanged):
        sys.exit(1)


class _IngestBars:
    """Two progress bars on stderr: files handled, chunks embedded."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.file_bar: Any = None
        self.chunk_bar: Any = None

    def files(self, total: int) -> None:
        self.file_bar = self._tqdm(total=total, desc="files", unit="file", file=sys.stderr, position=0)
        self.chunk_bar = self._tqdm(total=0, desc="chunks", unit="chunk", file=sys.stderr, position=1)

    def file_done(self, path: str, outcome: str) -> None:
        if self.file_bar is not None:
            self.file_bar.update(1)

    def chunks_queued(self, n: int) -> None:
        if self.chunk_bar is not None:
            self.chunk_bar.total += n
            self.chunk_bar.refresh()

    def chunks_done(self, n: int) -> None:
        if self.chunk_bar is not None:
            self.chunk_bar.update(n)

    def close(self) -> None:
        for bar in (self.chunk_bar, self.file_bar):
            if bar is not None:
                bar.close()


@main.group()
def docs() -> None:
    """List, search and remove ingested documents."""


@docs.command("list")
@click.option("--scope", help="Only this scope.")
@click.pass_obj
def docs_list(obj: Context, scope: str | None) -> None:
    """The ingested documents."""
    with _store_errors():
        found = _open_store(obj.settings()).documents(scope)
    if not found:
        click.echo(
            "No documents" + (f" in scope {scope}." if scope else ". Add some with: chinwag ingest PATH")
        )
        return
    for doc in found:
        click.echo(f"{doc.id}  {doc.scope:<10} {doc.chunks:>5} chunks  {doc.ingested_at}  {doc.path}")
    click.echo(f"{len(found)} documents, {sum(d.chunks for d in found)} chunks")


@docs.command("remove")
@click.argument("target")
@click.option("--scope", help="Only in this scope.")
@click.pass_obj
def docs_remove(obj: Context, target: str, scope: str | None) -> None:
    """Remove a document by id or path (a folder removes everything ingested under it)."""
    with _store_errors():
        removed = _open_store(obj.settings()).remove(target, scope)
    if not removed:
        raise click.ClickException(f"No ingested document matches {target}")
    for doc in removed:
        click.echo(f"removed {doc.path} ({doc.chunks} chunks, scope {doc.scope})")


@docs.command("search")
@click.argument("query")
@click.option("--scope", default="global", show_default=True, help="Search this scope (and global).")
@click.option("-k", "k", type=click.IntRange(1, 50), default=5, show_default=True, help="Passages to show.")
@click.pass_obj
def docs_search(obj: Context, query: str, scope: str, k: int) -> None:
    """Show the passages a question would retrieve, with their scores."""
    from bot.seams.retriever import scopes_for

    settings = obj.settings()
    with _store_errors():
        passages = _open_store(settings).query(query, scopes_for(scope), k)
    if not passages:
        click.echo("Nothing found.")
        return
    threshold = settings.retrieval.min_score
    for n, passage in enumerate(passages, start=1):
        mark = "" if passage.score >= threshold else f"  (below min_score {threshold}: not used)"
        label = source_label(passage.title, passage.location)
        click.echo(f"[{n}] {passage.score:.3f}  {label}  [{passage.scope}] {passage.path}{mark}")
        text = " ".join(passage.text.split())
        click.echo("    " + (text if len(text) <= 400 else text[:399] + "…"))


# models ---------------------------------------------------------------------------------


@main.command()
@click.pass_obj
def models(obj: Context) -> None:
    """List the models the configured model server offers (or, locally, the embedded ones)."""
    import os

    settings = obj.settings()
    if settings.model.backend != "openai":
        from bot.inference.weights import embedded_names

        click.echo(f"model.backend is local (this process runs {settings.model.name}); embedded models:")
        for name in embedded_names():
            click.echo(f"  {name}")
        return
    from bot.inference.openai_server import api_key_from, display_url, list_served

    try:
        served = list_served(settings.model, api_key_from(os.environ))
    except ChinwagError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"The model server at {display_url(settings.model.base_url or '')} offers:")
    for model in served:
        window = f"  (context window {model.context_window})" if model.context_window else ""
        mark = "*" if model.id == settings.model.name else " "
        click.echo(f"{mark} {model.id}{window}")
    if not any(model.id == settings.model.name for model in served):
        click.echo(f"model.name {settings.model.name!r} is not among them.")


# prepare --------------------------------------------------------------------------------


@main.command()
@click.option("--model", help="Model to prepare (default: the configured one).")
@click.pass_obj
def prepare(obj: Context, model: str | None) -> None:
    """Prepare the model ahead of time (assemble, verify, convert) so the first chat starts fast."""
    settings = obj.settings(model={"name": model})
    try:
        for line in inference.prepare(settings, True):
            click.echo(line)
    except ChinwagError as error:
        raise click.ClickException(str(error)) from None
    if settings.retrieval.enabled:
        from retrieval.embeddings import Embedder, EmbeddingError

        try:
            embedder = Embedder.load(
                settings.retrieval.embedding_model, settings.model_cache_dir, settings.model.threads
            )
        except EmbeddingError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"{embedder.name} (embeddings, {embedder.runtime}) is ready: {embedder.model_dir}")


# summarize, translate, actions ------------------------------------------------------------

register_tasks(main, _run, _model_overrides)
