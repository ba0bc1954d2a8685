"""The REPL through a real pseudo-terminal, with the real small model: type, stream, /set, Ctrl-C, resume."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pexpect
import pytest

from tests.cli_support import chinwag_bin, cli_env, stored

pytestmark = pytest.mark.model

# prompt_toolkit moves the cursor past the trailing space rather than printing it.
PROMPT = "you ›"
# The first run on a machine converts the model's GGUF; later runs load the cached copy.
START_TIMEOUT = 240


def spawn(data_dir: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        chinwag_bin(),
        ["chat", *args],
        env=cli_env(data_dir),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 100),
    )
    # A terminal's Enter key sends CR; LF is Ctrl-J, which the REPL takes as "new line".
    child.linesep = "\r"
    child.expect_exact(PROMPT, timeout=START_TIMEOUT)
    return child


ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-B]|[=>])")


def expect_text(child: pexpect.spawn, pattern: str, timeout: float = 60) -> str:
    """Wait until the screen output, without terminal escape codes, matches `pattern`."""
    regex = re.compile(pattern)
    seen = child.buffer
    child.buffer = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ANSI.sub("", seen)
        if regex.search(text):
            return text
        try:
            seen += child.read_nonblocking(4096, timeout=0.5)
        except pexpect.TIMEOUT:
            pass
    raise AssertionError(f"{pattern!r} not seen in {ANSI.sub('', seen)[-500:]!r}")


def quit_(child: pexpect.spawn) -> str:
    child.sendline("/exit")
    child.expect("Bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return child.before or ""


def test_chat_streams_sets_interrupts_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    child = spawn(data)
    try:
        # /set is answered by the engine.
        child.sendline("/set temperature 0")
        child.expect_exact("temperature = 0.0 for this conversation")
        child.sendline("/set temperature 7")
        child.expect("Invalid temperature '7'")

        # A reply streams, then a footer with the token count.
        child.sendline("Hello! What is the capital of France?")
        child.expect(r"(\d+) tokens · [\d.]+ s")
        child.expect_exact(PROMPT)

        # Ctrl-C in the middle of a long reply stops it and keeps what was said.
        child.sendline("/set max_tokens 400")
        child.expect_exact(PROMPT)
        child.sendline("Count from 1 to 300, one number per line.")
        child.expect_exact("one number per line.")
        expect_text(child, r"\b1\D{1,8}2\D{1,8}3\b")  # a few numbers have streamed
        child.sendintr()
        child.expect("interrupted")
        child.expect_exact(PROMPT)

        # Multi-line input: Esc Enter inserts a newline.
        child.send("first line\x1b\rsecond line\r")
        child.expect(r"tokens · [\d.]+ s")
        child.expect_exact(PROMPT)
        tail = quit_(child)
    finally:
        child.close(force=True)

    conversation_id = int(re.search(r"--resume (\d+)", tail).group(1))  # type: ignore[union-attr]
    [(conv, messages)] = stored(data)
    assert conv.id == conversation_id and conv.settings["max_tokens"] == 400
    roles = [(m.role, m.status) for m in messages]
    assert roles == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "interrupted"),
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert messages[1].content.strip(), "the first reply is empty"
    interrupted = messages[3]
    assert interrupted.completion_tokens is not None
    assert interrupted.content.strip() and interrupted.completion_tokens < 400
    assert messages[4].content == "first line\nsecond line"

    # A restart resumes the conversation with its history and its settings.
    child = spawn(data, "--resume")
    try:
        assert f"Resuming conversation #{conversation_id}" in ANSI.sub("", child.before or "")
        child.sendline("/settings")
        expect_text(child, r"max_tokens = 400 \(this conversation\)")
        child.sendline("/set max_tokens 16")
        child.expect_exact(PROMPT)
        child.sendline("And Germany?")
        child.expect(r"tokens · [\d.]+ s")
        child.expect_exact(PROMPT)  # before the prompt, the terminal is not yet in raw mode
        child.sendeof()  # Ctrl-D leaves
        child.expect("Bye")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)

    [(_, messages)] = stored(data)
    assert [m.content for m in messages][-2] == "And Germany?"
    assert messages[-1].role == "assistant" and messages[-1].content.strip()
    # The prompt of the resumed turn carried the earlier turns.
    last, first = messages[-1].prompt_tokens, messages[1].prompt_tokens
    assert last is not None and first is not None and last > first + 20


def test_resume_of_unknown_conversation_is_a_clear_error(tmp_path: Path) -> None:
    child = pexpect.spawn(
        chinwag_bin(),
        ["chat", "--resume", "4242"],
        env=cli_env(tmp_path / "data"),
        encoding="utf-8",
        timeout=60,
    )
    child.expect("No conversation #4242")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    assert "Traceback" not in (child.before or "")
