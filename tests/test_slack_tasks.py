"""Language tasks on Slack: real slack-bolt against the fake Slack (conversations.history/.replies,
users.info, chat.getPermalink), the real engine on SQLite, the FakeModel at the engine's seam."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bot.engine import Engine
from bot.seams.history import ConversationKey
from bot.types import ChatMessage
from config import Settings
from storage import SqlHistory
from tests.fake_slack import TEAM, FakeSlack
from tests.fakes import FakeModel
from tests.test_slack import Running, fake, mention, slack, slack_settings, start

__all__ = ["fake", "slack"]  # fixtures shared with test_slack

PEOPLE = {"U1": "Ana", "U2": "Raj", "U3": "Mei"}


def seed_thread(
    fake: FakeSlack, channel: str = "C1", root: str = "1700000100.000001", replies: int = 4
) -> None:
    fake.users.update(PEOPLE)
    fake.channels.setdefault(channel, "ops")
    said = [{"ts": root, "user": "U1", "text": "db-2 is out of disk, the deploy failed"}]
    for i in range(1, replies + 1):
        user = ["U2", "U3", "U1"][i % 3]
        said.append(
            {"ts": f"17000001{i:02d}.000002", "user": user, "text": f"reply {i} for <@U1>", "thread_ts": root}
        )
    said.append(
        {
            "ts": "1700000190.000003",
            "bot_id": "BCI",
            "username": "ci",
            "text": "build 42 green",
            "thread_ts": root,
        }
    )
    fake.history.setdefault(channel, []).extend(said)


def user_prompt(prompt: list[ChatMessage]) -> str:
    """What the model was given to read: the last user message (after any worked example)."""
    return [m.content for m in prompt if m.role == "user"][-1]


def posted(fake: FakeSlack, channel: str, thread: str | None) -> list[str]:
    return [m["text"] for m in fake.thread(channel, thread)]


async def test_summarize_in_a_thread_reads_it_by_name_and_links_each_point(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    root = "1700000100.000001"
    seed_thread(slack.fake)
    model.enqueue("- Raj will add disk [2] [3]")
    request = mention("summarize", "1700000199.000009", thread_ts=root)
    slack.fake.history["C1"].append({**request, "thread_ts": root})  # the request is in the thread too
    await slack.event(request, "EvS1")
    await slack.settle()

    prompt = user_prompt(model.prompts[0])
    assert "[1] Ana: db-2 is out of disk, the deploy failed" in prompt
    assert "[2] Mei: reply 1 for @Ana" in prompt and "[3] Ana: reply 2" in prompt
    assert "U1" not in prompt and "U2" not in prompt  # names, never ids
    assert "build 42" not in prompt and "summarize" not in prompt  # no bots, not the request itself
    (answer,) = posted(slack.fake, "C1", root)
    link = "https://fake.slack.com/archives/C1/p17000001{}000002?thread_ts=1700000100.000001&amp;cid=C1"
    assert answer == f"• Raj will add disk <{link.format('01')}|2> <{link.format('02')}|3>"
    assert len(slack.fake.called("chat.getPermalink")) == 1  # the workspace's address, learnt once
    conv = await history.find(ConversationKey("slack", TEAM, "C1", root))
    assert conv is not None
    request_row, reply_row = await history.load(conv.id)
    assert (
        request_row.metadata["read"][0] == f"{TEAM}:C1:{root}" and reply_row.metadata["task"] == "summarize"
    )

    # A follow-up in the thread continues the same conversation, with what was read.
    model.enqueue("Nobody disagreed.")
    await slack.event(
        {"type": "message", "user": "U2", "text": "and who disagreed?", "ts": "1700000200.000001",
         "channel": "C1", "channel_type": "channel", "thread_ts": root, "event_ts": "1700000200.000001"},
        "EvS2",
    )  # fmt: skip
    await slack.settle()
    assert "[1] Ana: db-2 is out of disk" in "\n".join(m.content for m in model.prompts[-1])


async def test_summarize_a_channel_window_from_the_slash_command(slack: Running, model: FakeModel) -> None:
    fake = slack.fake
    fake.users.update(PEOPLE)
    fake.channels.update({"C1": "general", "C9": "incidents"})
    now = 1_900_000_000  # the fake's clock is time.time(): these are in the future, inside any window
    fake.history["C9"] = [
        {"ts": f"{now + i}.000100", "user": ["U1", "U2"][i % 2], "text": f"incident note {i}"}
        for i in range(80)
    ]
    model.enqueue("- notes [50]")
    assert await slack.command("summarize #incidents 50 messages", channel="C1") == 200
    await fake.wait_for(lambda: len(model.prompts) == 1 and fake.called("chat.update"))
    await slack.settle()

    prompt = user_prompt(model.prompts[0])
    lines = [line for line in prompt.splitlines() if line.startswith("[")]
    assert (
        len(lines) == 50
        and lines[0] == "[1] Ana: incident note 30"
        and lines[-1] == "[50] Raj: incident note 79"
    )
    header = fake.thread("C1", None)[0]
    assert header["text"] == ":memo: `/chinwag summarize` for <@U1> — <#C9>, last 50 messages"
    (answer,) = posted(fake, "C1", header["ts"])
    assert answer == f"• notes <https://fake.slack.com/archives/C9/p{now + 79}000100|50>"
    history_calls = fake.called("conversations.history")
    assert history_calls and all(c.args["channel"] == "C9" for c in history_calls)


async def test_a_thread_longer_than_the_window_shows_its_parts_in_the_placeholder(
    settings: Settings, history: SqlHistory, fake: FakeSlack
) -> None:
    model = FakeModel(context_window=900)
    settings.tasks.summary_tokens = 100
    running = await start(Engine(model, history, settings), history, slack_settings(fake), fake)
    try:
        root = "1700000100.000001"
        seed_thread(fake, replies=90)
        model.responder = lambda prompt: ["notes"] if "one part" in prompt[0].content else None
        model.before_stream = lambda: asyncio.sleep(0.2)  # each part long enough to be shown
        model.enqueue("- the whole thread")
        await running.event(mention("summarise", "1700000199.000009", thread_ts=root), "EvL1")
        await running.settle()
    finally:
        await running.close()
    map_prompts = [p for p in model.prompts if "one part" in p[0].content]
    assert len(map_prompts) >= 2
    seen = [line for p in map_prompts for line in user_prompt(p).splitlines() if line.startswith("[")]
    assert len(seen) == 91 and seen[0].startswith("[1] Ana:") and seen[-1].startswith("[91] ")
    shown = [c.args["text"] for c in fake.called("chat.update")] + [
        c.args["text"] for c in fake.called("chat.postMessage")
    ]
    assert any(f"Reading 91 messages… part 2 of {len(map_prompts)}" in text for text in shown)
    assert posted(fake, "C1", root) == ["• the whole thread"]


async def test_a_channel_the_bot_cannot_read_is_one_line_and_nothing_is_posted(
    slack: Running, model: FakeModel
) -> None:
    slack.fake.channels["C5"] = "secret"
    slack.fake.not_in.add("C5")
    await slack.command("summarize <#C5|secret> 24h", channel="C1")
    await slack.fake.wait_for(lambda: slack.fake.responses)
    answer = slack.fake.responses[-1][1]
    assert answer == {
        "text": "I'm not in <#C5>: invite me with /invite @chinwag, then ask again.",
        "response_type": "ephemeral",
    }
    assert not slack.fake.called("chat.postMessage") and model.prompts == []


async def test_a_20000_message_channel_is_refused_after_reading_only_past_the_limit(
    slack: Running, model: FakeModel
) -> None:
    slack.fake.channels["C7"] = "firehose"
    slack.fake.history["C7"] = [
        {"ts": f"{1_900_000_000 + i}.000001", "user": "U1", "text": "spam"} for i in range(20000)
    ]
    await slack.command("summarize <#C7> 7d", channel="C1")
    await slack.fake.wait_for(lambda: slack.fake.responses, within=120)  # 26 pages of 200 messages
    assert "more than 5000 messages in that window" in slack.fake.responses[-1][1]["text"]
    assert len(slack.fake.called("conversations.history")) == 26  # 5,001 messages, 200 a page
    assert not slack.fake.called("chat.postMessage") and model.prompts == []


@pytest.mark.parametrize("words", ["summarize 3 bananas", "translate klingon"])
async def test_bad_words_get_one_line_before_anything_is_posted(slack: Running, words: str) -> None:
    await slack.command(words, channel="C1")
    await slack.fake.wait_for(lambda: slack.fake.responses)
    text = slack.fake.responses[-1][1]["text"]
    assert ("I don't understand 'bananas'" in text) or ("I don't know the language 'klingon'" in text)
    assert not slack.fake.called("chat.postMessage")


def flag(name: str, ts: str, user: str = "U2") -> dict[str, Any]:
    return {
        "type": "reaction_added",
        "user": user,
        "reaction": name,
        "item_user": "U1",
        "item": {"type": "message", "channel": "C1", "ts": ts},
        "event_ts": "1700000300.000001",
    }


async def test_a_flag_reaction_posts_the_translation_once_under_the_message(
    slack: Running, model: FakeModel, history: SqlHistory
) -> None:
    root = "1700000100.000001"
    seed_thread(slack.fake, replies=1)
    model.responder = lambda prompt: (
        ["le disque de db-2 est plein"] if "French" in prompt[0].content else None
    )
    await slack.event(flag("flag-fr", root), "EvF1")
    await slack.event(flag("flag-fr", root), "EvF1", retry=1)  # Slack's redelivery
    await slack.event(flag("fr", root, user="U3"), "EvF2")  # someone else, the same language
    await slack.settle()
    assert posted(slack.fake, "C1", root) == ["le disque de db-2 est plein"]
    assert (
        len(model.prompts) == 1 and user_prompt(model.prompts[0]) == "db-2 is out of disk, the deploy failed"
    )

    await slack.event(flag("pirate_flag", root), "EvF3")
    await slack.event(flag("pirate_flag", root, user="U3"), "EvF4")
    await slack.settle()
    assert posted(slack.fake, "C1", root)[1:] == [
        "No language goes with the flag pirate_flag: react with a country's flag (🇫🇷, 🇩🇪, 🇯🇵…)."
    ]
    # The translation is a conversation of its own: the thread does not become one chinwag follows.
    assert await history.find(ConversationKey("slack", TEAM, "C1", root)) is None
    assert await history.find(ConversationKey("slack", TEAM, "C1", f"translate:{root}")) is not None


async def test_actions_from_the_slash_command_hold_the_schema_when_the_model_does_not(
    slack: Running, model: FakeModel
) -> None:
    seed_thread(slack.fake, replies=2)
    model.enqueue('{"name": "record_action_items", "arguments": {"items": [{"what": ')  # cut short
    good = {"what": "Add 100 GB to db-2", "who": "Raj", "when": "tomorrow", "message": 1}
    model.enqueue(json.dumps({"name": "record_action_items", "arguments": {"items": [good]}}))
    await slack.command("actions 10 messages", channel="C1")
    await slack.fake.wait_for(lambda: len(model.prompts) == 2)
    await slack.settle()
    assert model.constrained == ["required", "required"]
    header = slack.fake.thread("C1", None)[0]
    (answer,) = posted(slack.fake, "C1", header["ts"])
    assert answer.startswith(
        "• [ ] Add 100 GB to db-2 — *Raj* · due 2023-11-15 (<https://fake.slack.com/archives/C1/p"
    )


async def test_a_custom_command_from_the_config_runs_on_slack(slack: Running, model: FakeModel) -> None:
    seed_thread(slack.fake, replies=1)
    model.enqueue("db-2 broke the deploy.")
    await slack.event(mention("tldr", "1700000199.000009", thread_ts="1700000100.000001"), "EvT1")
    await slack.settle()
    assert "Say in one or two sentences" in model.prompts[0][-1].content
    assert posted(slack.fake, "C1", "1700000100.000001") == ["db-2 broke the deploy."]
