"""Shared fixtures: settings in a temp data dir, a real SQLite history, the engine with a FakeModel."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.engine import Engine
from config import Settings, load_settings
from storage import SqlHistory
from tests.fakes import FakeModel

# No test reaches the network, and nothing tries a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse connections to anything but loopback (and Unix sockets)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        if isinstance(address, tuple) and address and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"tests may not reach the network ({address!r})")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Default settings with the data directory in tmp_path and no CHINWAG_* leaking in."""
    for name in list(os.environ):
        if name.startswith("CHINWAG_"):
            monkeypatch.delenv(name)
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[SqlHistory]:
    store = await SqlHistory.open(settings)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def engine(model: FakeModel, history: SqlHistory, settings: Settings) -> Engine:
    return Engine(model, history, settings)
