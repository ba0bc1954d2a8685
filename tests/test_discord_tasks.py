"""Language tasks on Discord: real discord.py against the fake Discord (REST channel history, flag
reactions, slash commands), the real engine on SQLite, the FakeModel at the engine's seam."""

from __future__ import annotations

from typing import Any

from adapters.discord import DiscordAdapter
from bot.engine import Engine
from bot.seams.history import ConversationKey
from bot.types import ChatMessage
from config import Settings
from config.settings import DiscordSettings
from storage import SqlHistory
from tests.fake_discord import FakeDiscord
from tests.fakes import FakeModel
from tests.test_discord import CHANNEL, GUILD, Running, fake

__all__ = ["fake"]  # the fixture shared with test_discord

PEOPLE = {501: "Ana", 502: "Raj"}


def read_lines(prompt: list[ChatMessage]) -> list[str]:
    last = [m.content for m in prompt if m.role == "user"][-1]
    return [line for line in last.splitlines() if line.startswith("[")]


def seed(fake: FakeDiscord, n: int, channel: int = CHANNEL) -> list[dict[str, Any]]:
    said = []
    for i in range(n):
        user = 501 + i % 2
        said.append(
            fake.said_earlier(
                f"note {i} about the release", channel_id=channel, guild_id=GUILD, user_id=user,
                name=PEOPLE[user], seconds_ago=600 - i,
            )
        )  # fmt: skip
    fake.said_earlier(
        "build green", channel_id=channel, guild_id=GUILD, user_id=777, name="ci", bot=True, seconds_ago=5
    )
    return said


def answer_of(fake: FakeDiscord, interaction: dict[str, Any]) -> str:
    found = [m for m in fake.messages.values() if m.get("interaction_token") == interaction["token"]]
    return "\n".join(m["content"] for m in found)


async def run_slash(running: Running, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    interaction = await running.fake.slash(name, options, channel_id=CHANNEL, guild_id=GUILD)
    await running.fake.wait_for(lambda: bool(running.fake.sent("POST", "/callback")))
    await running.fake.wait_for(lambda: bool(answer_of(running.fake, interaction)))
    await running.idle()
    return interaction


def make(
    engine: Engine,
    history: SqlHistory,
    fake: FakeDiscord,
    commands: list[tuple[str, str]] | None = None,
    **overrides: Any,
) -> DiscordAdapter:
    """The adapter as `chinwag serve` makes it, with the team's commands when given."""
    options: dict[str, Any] = {
        "api_base_url": fake.api_base_url,
        "gateway_url": fake.gateway_url,
        "edit_interval_s": 0.05,
        "shutdown_timeout_s": 5,
        **overrides,
    }
    adapter = DiscordAdapter(engine, history, DiscordSettings(**options), "test-token", commands or [])
    adapter.client._connection.guild_ready_timeout = 0.05
    return adapter


async def test_summarize_reads_the_channel_history_with_names_and_links(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel
) -> None:
    seed(fake, 12)
    model.enqueue("- Ana and Raj discussed the release [12]")
    async with Running(make(engine, history, fake, message_content_intent=True), fake) as running:
        interaction = await run_slash(running, "summarize", {"since": "10 messages"})
    lines = read_lines(model.prompts[0])
    assert (
        len(lines) == 9
        and lines[0] == "[1] Raj: note 3 about the release"
        and lines[-1].startswith("[9] Raj: note 11")
    )
    assert not any("build green" in line for line in lines)  # the last 10 include a bot's, left out
    text = answer_of(fake, interaction)
    assert (
        text.startswith("- Ana and Raj discussed the release") and "[12]" in text
    )  # no message 12: not linked
    model.enqueue("- more [1]")
    async with Running(make(engine, history, fake, message_content_intent=True), fake) as running:
        second = await run_slash(running, "summarize", {"since": "1h"})
    assert len(read_lines(model.prompts[1])) == 12
    first_id = sorted(m["id"] for m in fake.messages.values() if m["content"] == "note 0 about the release")[
        0
    ]
    assert f"[1](https://discord.com/channels/{GUILD}/{CHANNEL}/{first_id})" in answer_of(fake, second)
    conv = await history.find(ConversationKey("discord", str(GUILD), str(CHANNEL), None))
    assert conv is not None
    assert [m.metadata.get("task") for m in await history.load(conv.id)] == ["summarize"] * 4


async def test_without_the_message_content_intent_it_says_so_and_how_to_enable_it(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel
) -> None:
    fake.content_intent = False
    seed(fake, 3)
    async with Running(make(engine, history, fake), fake) as running:
        interaction = await run_slash(running, "summarize")
    text = answer_of(fake, interaction)
    assert "Message Content intent" in text and "discord.message_content_intent = true" in text
    assert model.prompts == []  # blanks are never summarised


async def test_a_flag_reaction_translates_in_a_thread_once(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel
) -> None:
    [message] = seed(fake, 1)
    model.responder = lambda prompt: (
        ["nota 0 sobre el lanzamiento"] if "Spanish" in prompt[0].content else None
    )
    async with Running(make(engine, history, fake, message_content_intent=True), fake) as running:
        mid = int(message["id"])
        await fake.react("🇪🇸", message_id=mid, channel_id=CHANNEL, guild_id=GUILD, user_id=501)
        await fake.wait_for(lambda: len(fake.bot_messages(mid)) == 1)
        await fake.react("🇪🇸", message_id=mid, channel_id=CHANNEL, guild_id=GUILD, user_id=502)  # again
        await fake.react("🇲🇽", message_id=mid, channel_id=CHANNEL, guild_id=GUILD, user_id=502)  # Spanish too
        await fake.react("🏴\u200d☠️", message_id=mid, channel_id=CHANNEL, guild_id=GUILD, user_id=502)
        await fake.wait_for(lambda: len(fake.bot_messages(mid)) == 2)
        await running.idle()
    assert fake.sent("POST", f"/channels/{CHANNEL}/messages/{mid}/threads")
    assert [m["content"] for m in fake.bot_messages(mid)] == [
        "nota 0 sobre el lanzamiento",
        "⚠️ No language goes with the flag 🏴\u200d☠️: react with a country's flag (🇫🇷, 🇩🇪, 🇯🇵…).",
    ]
    assert len(model.prompts) == 1


async def test_the_task_commands_and_the_teams_own_are_registered_and_run(
    engine: Engine, history: SqlHistory, fake: FakeDiscord, model: FakeModel, settings: Settings
) -> None:
    seed(fake, 2)
    commands = [(c.name, c.description) for c in settings.tasks.commands]
    adapter = make(engine, history, fake, commands, message_content_intent=True)
    model.enqueue("They talked about the release.")
    async with Running(adapter, fake) as running:
        [sync] = fake.sent("PUT", "/commands")
        names = {c["name"] for c in sync.body}
        assert {"summarize", "actions", "translate", "standup", "tldr"} <= names
        interaction = await run_slash(running, "tldr", {"since": "2 messages"})
        bad = await run_slash(running, "translate", {"language": "klingon", "text": "hi"})
    assert "Say in one or two sentences" in model.prompts[0][-1].content
    assert answer_of(fake, interaction) == "They talked about the release."
    assert answer_of(fake, bad).startswith("⚠️ I don't know the language 'klingon': name it in English")
