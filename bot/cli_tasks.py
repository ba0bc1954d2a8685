"""`chinwag summarize`, `translate` and `actions` on a file or stdin: the engine's language tasks
from the command line, with a progress bar on stderr while a long input is read in parts."""

from __future__ import annotations

import getpass
import json
import re
import sys
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bot.app import running
from bot.engine import new_thread_id
from bot.errors import ChinwagError
from bot.tasks.files import messages_from_text
from bot.text import read_bytes_as_text
from bot.types import Incoming, Notice, TextDelta, TurnDone, TurnFailed
from config import Settings

err = Console(stderr=True, highlight=False)
_PART = re.compile(r"part (\d+) of (\d+)")


def _read(path: str, settings: Settings) -> tuple[str, str]:
    """The text of FILE, of stdin ('-') or of an ingested document, and a label for it."""
    if path == "-":
        return read_bytes_as_text(sys.stdin.buffer.read()), "stdin"
    file = Path(path).expanduser()
    if path.startswith("file://") or not file.exists():
        found = _ingested(path, settings)
        if found is not None:
            return found
    try:
        return read_bytes_as_text(file.read_bytes()), file.name
    except OSError as error:
        raise click.ClickException(f"cannot read {path}: {error.strerror or error}") from None


def _ingested(target: str, settings: Settings) -> tuple[str, str] | None:
    """An ingested document's text, by id, path or `file://` URL (the file itself may be gone)."""
    from retrieval.store import DocumentStore

    if not settings.retrieval.enabled:
        return None
    try:
        store = DocumentStore.open(settings)
        doc = store.find(target)
        text = store.document_text(doc) if doc is not None else None
    except ChinwagError as error:
        raise click.ClickException(f"cannot read {target}: {error}") from None
    if doc is None or not text:
        if target.startswith("file://"):
            raise click.ClickException(f"cannot read {target}: no ingested document has that path")
        return None
    return text, doc.title or Path(doc.path).name


class _Progress:
    """A bar for "part 2 of 5" notices (a line per notice when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def notice(self, text: str) -> None:
        match = _PART.search(text)
        if not err.is_terminal or match is None:
            if self.bar is None:
                err.print(f"[dim]{text}[/dim]")
            return
        done, total = int(match.group(1)) - 1, int(match.group(2))
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(), console=err, transient=True,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(text, total=total)
        assert self.task is not None
        self.bar.update(self.task, completed=done, description=text.split("…")[0] + "…")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


async def run_task(settings: Settings, command: str, text: str, label: str, as_json: bool) -> int:
    """Run one task on `text` and print its answer; the exit code."""
    messages = messages_from_text(text)
    incoming = Incoming(
        text=command,
        platform="cli",
        channel=command.split()[0].lstrip("/"),
        thread=new_thread_id(),
        user_id=getpass.getuser(),
        source=messages,
        source_label=label,
    )
    progress = _Progress()
    async with running(settings) as app:
        try:
            async with aclosing(app.engine.handle(incoming)) as events:
                async for event in events:
                    if isinstance(event, Notice):
                        progress.notice(event.text)
                    elif isinstance(event, TextDelta):
                        progress.close()
                    elif isinstance(event, TurnDone):
                        progress.close()
                        if as_json:
                            result: dict[str, Any] = {
                                "conversation_id": event.conversation_id,
                                "text": event.text,
                                "messages_read": len(messages),
                                "latency_ms": event.usage.latency_ms,
                                "model": event.model,
                            }
                            for key in ("action_items", "language", "parts", "output"):
                                if key in event.metadata:
                                    result[key] = event.metadata[key]
                            print(json.dumps(result, ensure_ascii=False))
                        else:
                            print(event.text)
                        return 0
                    elif isinstance(event, TurnFailed):
                        progress.close()
                        err.print(f"chinwag: {event.message}")
                        return 1
        finally:
            progress.close()
    err.print("chinwag: no answer.")
    return 1


Runner = Callable[[Coroutine[Any, Any, int]], int]
Overrides = Callable[[str | None, str | None, float | None], dict]


def _command(
    name: str, help_text: str, run: Runner, overrides: Overrides, language_option: bool = False
) -> click.Command:
    @click.argument("source", metavar="FILE|-|DOC")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
    @click.option("--bots", is_flag=True, help="Keep bots' messages (left out by default).")
    @click.option("--model", help="Model: embedded name, local path or Hugging Face id.")
    @click.pass_obj
    def command(obj: Any, source: str, as_json: bool, bots: bool, model: str | None, **kw: Any) -> None:
        settings = obj.settings(**overrides(model, None, None))
        text, label = _read(source, settings)
        line = f"/{name}"
        if language_option:
            line += f" {kw['to']}"
        elif bots:
            line += " bots"
        sys.exit(run(run_task(settings, line, text, label, as_json)))

    if language_option:
        command = click.option("--to", required=True, metavar="LANG", help="Language: name or code.")(command)
    command.__doc__ = help_text
    return click.command(name)(command)


def register(group: click.Group, run: Runner, overrides: Overrides) -> None:
    """Add the task commands to the `chinwag` group; `run` turns our errors into one line,
    `overrides` makes settings overrides of --model."""
    doc = (
        "Summarise FILE (or stdin: '-'): a chat log of 'Name: text' lines, or a document; an ingested "
        "document also by its id or file:// URL (chinwag docs list)."
    )
    group.add_command(_command("summarize", doc, run, overrides))
    doc = "Translate FILE (or stdin: '-') into --to LANG."
    group.add_command(_command("translate", doc, run, overrides, language_option=True))
    doc = "The action items of FILE (or stdin: '-'): what, who, by when."
    group.add_command(_command("actions", doc, run, overrides))
