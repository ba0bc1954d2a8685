"""Running the real `chinwag` command in tests: environment, the small model, reading the database."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from bot.seams.history import Conversation, StoredMessage
from config import load_settings
from storage import SqlHistory

SMALL_MODEL = "smollm2-135m-instruct"


def chinwag_bin() -> str:
    """The console script installed next to this interpreter."""
    candidate = Path(sys.executable).with_name("chinwag")
    return str(candidate) if candidate.exists() else (shutil.which("chinwag") or "chinwag")


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment: the small model, a private data dir, greedy and short replies, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_")}
    env.update(
        CHINWAG_DATA_DIR=str(data_dir),
        CHINWAG_MODEL__NAME=SMALL_MODEL,
        CHINWAG_GENERATION__TEMPERATURE="0",
        CHINWAG_GENERATION__MAX_TOKENS="48",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PROMPT_TOOLKIT_NO_CPR="1",
        TERM="xterm-256color",
        COLUMNS="100",
        LINES="40",
    )
    env.update(extra)
    return env


def stored(data_dir: Path) -> list[tuple[Conversation, list[StoredMessage]]]:
    """Every conversation in the data dir's database with its messages, oldest first."""

    async def read() -> list[tuple[Conversation, list[StoredMessage]]]:
        store = await SqlHistory.open(load_settings(data_dir=data_dir))
        try:
            conversations = sorted(await store.list(limit=1000), key=lambda c: c.id)
            return [(c, await store.load(c.id)) for c in conversations]
        finally:
            await store.close()

    return asyncio.run(read())


async def stop_with_sigterm(process: asyncio.subprocess.Process, within: float = 60.0) -> tuple[float, str]:
    """Send SIGTERM; the seconds until the process exited, and what it wrote (stdout and stderr)."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    seconds = time.monotonic() - started
    logging.getLogger(__name__).info("SIGTERM to exit: %.2f s (exit status %s)", seconds, process.returncode)
    return seconds, stdout.decode() + stderr.decode()
