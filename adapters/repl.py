"""The terminal adapter: a REPL (prompt_toolkit for input, rich for output) around the engine."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.text import Text

from adapters.reply import ChatEngine
from bot.citations import documents_notice, sources_footer
from bot.types import (
    CommandResult,
    Event,
    Incoming,
    Notice,
    TextDelta,
    ToolCall,
    TurnDone,
    TurnFailed,
    TurnStarted,
)

EXIT_WORDS = {"/exit", "/quit", "/bye"}
PROMPT = "you › "


@dataclass
class Session:
    """Where the REPL's messages go; `template.conversation_id` is set once the engine names it."""

    template: Incoming
    model_name: str = ""

    @property
    def conversation_id(self) -> int | None:
        """The current conversation, once known."""
        return self.template.conversation_id

    def incoming(self, text: str) -> Incoming:
        """An Incoming for one line typed."""
        return replace(self.template, text=text)

    def follow(self, conversation_id: int) -> None:
        """Continue in this conversation from now on (after the first turn, or /reset)."""
        self.template = replace(self.template, conversation_id=conversation_id)


class StreamView:
    """Prints a reply as it streams; when it is complete, redraws it as rendered Markdown."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.text = ""
        self.finished = False

    def add(self, delta: str) -> None:
        """Show a piece of the reply at once."""
        self.text += delta
        self.console.file.write(delta)
        self.console.file.flush()

    def _rows(self) -> int:
        width = max(self.console.width, 1)
        rows = 0
        for line in self.text.split("\n"):
            cells = Text(line).cell_len
            rows += max(1, -(-cells // width))
        return rows

    def finish(self, render: bool) -> None:
        """End the reply: redraw as Markdown when it fits on screen, else leave it as streamed."""
        if self.finished or not self.text:
            return
        self.finished = True
        rows = self._rows()
        if render and self.console.is_terminal and rows < self.console.height - 1:
            # Back to the first row of the streamed text, clear to the end, print rendered.
            up = rows - 1
            self.console.file.write("\r" + (f"\x1b[{up}A" if up else "") + "\x1b[J")
            self.console.file.flush()
            self.console.print(Markdown(self.text.strip()))
        else:
            self.console.file.write("\n")
            self.console.file.flush()


class Repl:
    """Reads lines, sends them to the engine, streams the answers, until Ctrl-D or /exit."""

    def __init__(
        self,
        handler: ChatEngine,
        session: Session,
        history_file: Path,
        console: Console | None = None,
    ) -> None:
        self.handler = handler
        self.session = session
        self.history_file = history_file
        self.console = console or Console(highlight=False)

    async def run(self, greeting: str | None = None) -> None:
        """The loop."""
        if greeting:
            self.console.print(Markdown(greeting))
        read = self._terminal_reader() if sys.stdin.isatty() else self._plain_reader()
        async for line in read:
            text = line.strip()
            if text.lower() in EXIT_WORDS:
                break
            if not text:
                continue
            await self.turn(text)
        self.console.print("[dim]Bye.[/dim]")

    async def _terminal_reader(self) -> AsyncIterator[str]:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        self.history_file.parent.mkdir(parents=True, exist_ok=True)
        bindings = KeyBindings()

        @bindings.add("escape", "enter")
        def _newline(event: object) -> None:
            event.current_buffer.insert_text("\n")  # type: ignore[attr-defined]

        @bindings.add("c-j")
        def _newline_ctrl_j(event: object) -> None:
            event.current_buffer.insert_text("\n")  # type: ignore[attr-defined]

        prompt: PromptSession[str] = PromptSession(
            history=FileHistory(str(self.history_file)),
            key_bindings=bindings,
            multiline=False,
            prompt_continuation=lambda width, line, wrap: "… ".rjust(width),
        )
        while True:
            try:
                yield await prompt.prompt_async(PROMPT)
            except KeyboardInterrupt:
                # Ctrl-C at the prompt clears the line, as in a shell.
                continue
            except EOFError:
                return

    async def _plain_reader(self) -> AsyncIterator[str]:
        # Piped input: one message per line, no prompt_toolkit (it needs a terminal).
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                return
            yield line

    async def turn(self, text: str) -> None:
        """Send one line and show the answer; Ctrl-C stops the reply and keeps what was said."""
        task = asyncio.create_task(self._show(text))
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, task.cancel)
            installed = True
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            installed = False
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            self.console.print("[yellow]⏹ interrupted — what was said so far is kept.[/yellow]")
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    async def _show(self, text: str) -> None:
        view = StreamView(self.console)
        status = self.console.status("[dim]thinking…[/dim]", spinner="dots")
        waiting = self.console.is_terminal and not text.startswith("/")
        if waiting:
            status.start()

        async def approve(request: Any) -> bool:
            # The spinner would draw over the question.
            nonlocal waiting
            if waiting:
                status.stop()
                waiting = False
            view.finish(render=False)
            args = ", ".join(f"{k}={v!r}" for k, v in request.arguments.items())
            question = f"⚙ {request.name}({args}) needs your approval. Run it? [y/N] "
            answer = await asyncio.to_thread(self._ask, question)
            return answer.strip().lower() in ("y", "yes")

        try:
            async with aclosing(self.handler.handle(self.session.incoming(text), approve)) as events:
                async for event in events:
                    if waiting and isinstance(event, Notice):
                        # While nothing is written yet, a notice (a place in the queue, a summary
                        # being made) is the spinner's text, replaced by the next one.
                        status.update(Text(event.text, style="dim"))
                        continue
                    if waiting and isinstance(event, (TextDelta, TurnDone, TurnFailed, CommandResult)):
                        status.stop()
                        waiting = False
                    self._on(event, view)
        finally:
            if waiting:
                status.stop()
            view.finish(render=False)  # no-op when the reply already finished

    def _ask(self, question: str) -> str:
        """One line from the user (no prompt_toolkit session is reading while a reply runs)."""
        self.console.print(Text(question, style="yellow"), end="")
        line = sys.stdin.readline()
        return line

    def _on(self, event: Event, view: StreamView) -> None:
        if isinstance(event, TurnStarted):
            self.session.follow(event.conversation_id)
        elif isinstance(event, TextDelta):
            view.add(event.text)
        elif isinstance(event, Notice):
            self.console.print(f"[dim]{event.text}[/dim]")
        elif isinstance(event, ToolCall):
            view.finish(render=False)
            style = "dim" if event.status == "ok" else "yellow"
            self.console.print(Text(f"⚙ {event.summary()}", style=style))
        elif isinstance(event, CommandResult):
            self.session.follow(event.conversation_id)
            style = "" if event.ok else "red"
            self.console.print(Markdown(event.text, style=style))
        elif isinstance(event, TurnDone):
            self.session.follow(event.conversation_id)
            view.finish(render=True)
            if sources := sources_footer(event.metadata.get("sources") or []):
                self.console.print(Text(sources, style="cyan"))
            if notice := documents_notice(event.metadata):
                self.console.print(Text(f"⚠ {notice}", style="yellow"))
            self.console.print(Text(_footer(event), style="dim"))
        elif isinstance(event, TurnFailed):
            view.finish(render=False)
            if event.conversation_id is not None:
                self.session.follow(event.conversation_id)
            self.console.print(Text(f"✗ {event.message}", style="red"))


def _footer(done: TurnDone) -> str:
    usage = done.usage
    seconds = usage.latency_ms / 1000
    parts = [f"{usage.completion_tokens} tokens", f"{seconds:.1f} s"]
    if usage.first_token_ms is not None and usage.completion_tokens > 1:
        decode = (usage.latency_ms - usage.first_token_ms) / 1000
        if decode > 0:
            parts.append(f"{(usage.completion_tokens - 1) / decode:.1f} tok/s")
    if done.status == "interrupted":
        parts.append("interrupted")
    return " · ".join(parts)
