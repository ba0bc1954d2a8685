"""The `chinwag` command as a user runs it: ask (real small model), history, errors."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bot.seams.history import ConversationKey, NewMessage
from config import load_settings
from storage import SqlHistory
from tests.cli_support import SMALL_MODEL, chinwag_bin, cli_env, stored


def chinwag(
    data_dir: Path, *args: str, input: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chinwag_bin(), *args],
        env=cli_env(data_dir, **env),
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )


def seed(data_dir: Path) -> int:
    """A stored conversation with two turns, written through the real store."""

    async def write() -> int:
        store = await SqlHistory.open(load_settings(data_dir=data_dir))
        try:
            conv = await store.resolve(ConversationKey("terminal", "local", "repl", "abc"))
            await store.append(conv.id, NewMessage("user", "What is **2+2**?"))
            await store.append(
                conv.id, NewMessage("assistant", "It is 4.", model="m", completion_tokens=4, latency_ms=120)
            )
            await store.append(conv.id, NewMessage("user", "Thanks"))
            await store.append(conv.id, NewMessage("assistant", "You're wel", status="interrupted"))
            return conv.id
        finally:
            await store.close()

    return asyncio.run(write())


@pytest.mark.model
def test_ask_json_then_continue_from_stdin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = chinwag(data, "ask", "--json", "What is the capital of France?")
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert set(answer) == {
        "conversation_id",
        "text",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "model",
        "sources",
        "tool_calls",
        "documents",
    }
    assert answer["sources"] == []  # nothing ingested in this data dir
    assert answer["documents"] in {"on", "off"}  # searched (and found nothing), or not searched
    assert answer["text"].strip() and answer["completion_tokens"] > 0
    assert answer["prompt_tokens"] > 10 and answer["latency_ms"] > 0
    assert answer["model"] == SMALL_MODEL

    second = chinwag(
        data, "ask", "--conversation", str(answer["conversation_id"]), "-", input="And of Italy?"
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip()  # plain text, streamed

    [(conv, messages)] = stored(data)
    assert conv.id == answer["conversation_id"] and conv.key.platform == "cli"
    assert [m.content for m in messages[::2]] == ["What is the capital of France?", "And of Italy?"]
    assert messages[1].content == answer["text"]
    assert messages[3].content.strip() == second.stdout.strip()


@pytest.mark.model
def test_ask_failures_exit_non_zero_with_a_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    missing = chinwag(data, "ask", "--conversation", "999", "hello")
    assert missing.returncode == 1 and "no conversation #999" in missing.stderr.lower()
    assert "Traceback" not in missing.stderr

    empty = chinwag(data, "ask", "-", input="   ")
    assert empty.returncode != 0 and "empty" in empty.stderr

    bad_model = chinwag(data, "ask", "--model", "./no/such/model", "hello")
    assert bad_model.returncode != 0 and "Traceback" not in bad_model.stderr
    assert "no/such/model" in bad_model.stderr


@pytest.mark.slow
def test_history_list_show_export_delete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conv_id = seed(data)

    listed = chinwag(data, "history", "list")
    assert listed.returncode == 0, listed.stderr
    assert "What is **2+2**?" in listed.stdout or "What is 2+2?" in listed.stdout
    assert str(conv_id) in listed.stdout and "4" in listed.stdout

    shown = chinwag(data, "history", "show", str(conv_id))
    assert shown.returncode == 0 and "It is 4." in shown.stdout and "interrupted" in shown.stdout

    md = chinwag(data, "history", "export", str(conv_id), "--format", "md")
    assert md.stdout.startswith(f"# Conversation #{conv_id}")
    assert "## You" in md.stdout and "It is 4." in md.stdout and "interrupted" in md.stdout

    exported = chinwag(data, "history", "export", str(conv_id), "--format", "json")
    document = json.loads(exported.stdout)
    assert document["id"] == conv_id and document["platform"] == "terminal"
    assert [m["role"] for m in document["messages"]] == ["user", "assistant"] * 2
    assert document["messages"][1]["completion_tokens"] == 4
    assert document["messages"][3]["status"] == "interrupted"

    out = tmp_path / "conv.json"
    chinwag(data, "history", "export", str(conv_id), "--format", "json", "-o", str(out))
    assert json.loads(out.read_text()) == document

    deleted = chinwag(data, "history", "delete", str(conv_id), "--yes")
    assert deleted.returncode == 0 and stored(data) == []
    again = chinwag(data, "history", "show", str(conv_id))
    assert again.returncode != 0 and f"No conversation #{conv_id}" in again.stderr
    assert "Traceback" not in again.stderr


def test_config_errors_name_the_key_without_traceback(tmp_path: Path) -> None:
    result = chinwag(tmp_path / "data", "history", "list", CHINWAG_GENERATION__TEMPERATUR="1")
    assert result.returncode != 0
    assert "generation.temperatur" in result.stderr and "Traceback" not in result.stderr

    config = tmp_path / "c.toml"
    config.write_text('[model]\nnmae = "x"\n')
    result = chinwag(tmp_path / "data", "--config", str(config), "history", "list")
    assert result.returncode != 0 and "model.nmae" in result.stderr


@pytest.mark.slow
def test_ingest_then_docs_list_search_and_remove(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "wifi.md").write_text("# Office\n\n## Wifi\n\nThe guest wifi network is LARK-GUEST.\n")
    (folder / "notes.txt").write_text("Standup is at 9:45 every weekday.\n")
    (folder / "broken.pdf").write_bytes(b"not a pdf")

    first = chinwag(data, "ingest", str(folder))
    assert first.returncode == 0, first.stderr
    assert "2 added, 0 updated, 0 unchanged, 1 skipped" in first.stdout
    assert "broken.pdf" in first.stderr and "Traceback" not in first.stderr
    again = chinwag(data, "ingest", str(folder))
    assert "0 added, 0 updated, 2 unchanged" in again.stdout

    listed = chinwag(data, "docs", "list")
    assert "wifi.md" in listed.stdout and "notes.txt" in listed.stdout and "2 documents" in listed.stdout
    found = chinwag(data, "docs", "search", "what is the guest wifi called", "-k", "1")
    assert found.returncode == 0 and "LARK-GUEST" in found.stdout and "Office — Wifi" in found.stdout

    removed = chinwag(data, "docs", "remove", str(folder / "wifi.md"))
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert "wifi.md" not in chinwag(data, "docs", "list").stdout
    missing = chinwag(data, "docs", "remove", str(folder / "wifi.md"))
    assert missing.returncode != 0 and "No ingested document" in missing.stderr


@pytest.mark.model
def test_ask_json_lists_the_sources_with_their_text(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "wifi.md").write_text("# Office\n\n## Wifi\n\nThe guest wifi network is LARK-GUEST.\n")
    assert chinwag(data, "ingest", str(tmp_path / "wifi.md")).returncode == 0
    done = chinwag(data, "ask", "--json", "What is the name of the guest wifi network?")
    assert done.returncode == 0, done.stderr
    [source] = json.loads(done.stdout)["sources"]
    assert source["title"] == "Office" and "LARK-GUEST" in source["text"] and source["score"] > 0.3
    assert source["path"].endswith("wifi.md") and source["location"] == "Office > Wifi"


@pytest.mark.slow
def test_serve_with_no_platform_configured_names_every_missing_token(tmp_path: Path) -> None:
    env = {k: v for k, v in cli_env(tmp_path / "data").items() if not k.startswith(("SLACK_", "DISCORD_"))}
    result = subprocess.run(
        [chinwag_bin(), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "SLACK_BOT_TOKEN" in result.stderr and "DISCORD_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    discord_only = subprocess.run(
        [chinwag_bin(), "serve", "--discord"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert discord_only.returncode != 0 and "DISCORD_TOKEN" in discord_only.stderr
    assert "SLACK" not in discord_only.stderr


@pytest.mark.model
@pytest.mark.slow
def test_prepare_also_makes_the_quantized_copy(tmp_path: Path) -> None:
    result = chinwag(tmp_path / "data", "prepare", "--model", SMALL_MODEL)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "(int4/int8 weights) is ready" in x)
    assert (Path(line.rsplit(": ", 1)[1]) / "model.pt").is_file()
    # And chinwag's CPU kernels, built into the same cache (or a sentence saying why not).
    from bot.inference import kernels

    if shutil.which("g++") and kernels.unsupported() is None:
        # Which path runs here, and why.
        chosen, why = kernels.choose("auto")
        assert chosen is not None and f"chinwag's CPU kernels are ready: {why}." in result.stdout
    else:
        assert "chinwag's CPU kernels" in result.stdout


@pytest.mark.model
def test_ask_keeps_and_answers_a_question_that_is_not_utf8(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        [chinwag_bin(), "ask", "-"],
        env=cli_env(data, LANG="en_US.UTF-8"),
        input=b"What is \xff 2+2?",
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [(_, messages)] = stored(data)
    assert messages[0].content == "What is \ufffd 2+2?"
    assert json.loads(messages[0].metadata["original_text"]).encode("utf-8", "surrogateescape") == (
        b"What is \xff 2+2?"
    )
    assert messages[1].role == "assistant" and messages[1].content.strip()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    return line


@pytest.mark.slow
def test_a_data_directory_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert "is a file" in one_line_error(chinwag(a_file, "history", "list"))
    assert "Not a directory" in one_line_error(chinwag(a_file / "data", "history", "list"))
    # Read-only: root writes anywhere permissions would stop others, but not into /sys.
    if os.geteuid() == 0:
        read_only = Path("/sys/chinwag-test-data")
    else:
        read_only = tmp_path / "read-only"
        read_only.mkdir(mode=0o500)
        read_only = read_only / "data"
    line = one_line_error(chinwag(read_only, "history", "list"))
    assert str(read_only) in line and ("not permitted" in line or "denied" in line)


@pytest.mark.slow
def test_a_database_file_that_is_not_sqlite_is_one_line_and_an_empty_one_is_used(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "chinwag.db").write_text("these are my notes, not a database\n")
    assert "is not an SQLite database" in one_line_error(chinwag(data, "history", "list"))
    (data / "chinwag.db").write_bytes(b"")
    empty = chinwag(data, "history", "list")
    assert empty.returncode == 0 and "No conversations yet." in empty.stdout


@pytest.mark.slow
def test_an_empty_data_dir_variable_means_the_default_one(tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    env = cli_env(tmp_path, CHINWAG_DATA_DIR="", XDG_DATA_HOME=str(tmp_path / "xdg"))
    result = subprocess.run(
        [chinwag_bin(), "history", "list"], env=env, cwd=work, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == []
    assert (tmp_path / "xdg" / "chinwag" / "chinwag.db").is_file()


@pytest.mark.slow
def test_history_errors_are_one_line_and_export_never_overwrites_unasked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conv_id = seed(data)
    huge = one_line_error(chinwag(data, "history", "show", "99999999999999999999999"))
    assert "no conversation has the id 99999999999999999999999" in huge
    assert "99999999999999999999999" in one_line_error(
        chinwag(data, "ask", "--conversation", "99999999999999999999999", "hi")
    )
    full = one_line_error(chinwag(data, "history", "export", str(conv_id), "-o", "/dev/full"))
    assert "Cannot write /dev/full: No space left on device" in full
    missing = tmp_path / "no" / "such" / "dir" / "out.md"
    assert "No such file or directory" in one_line_error(
        chinwag(data, "history", "export", str(conv_id), "-o", str(missing))
    )

    out = tmp_path / "out.md"
    out.write_text("my own notes\n")
    refused = one_line_error(chinwag(data, "history", "export", str(conv_id), "-o", str(out)))
    assert "exists; add --force" in refused and out.read_text() == "my own notes\n"
    forced = chinwag(data, "history", "export", str(conv_id), "-o", str(out), "--force")
    assert forced.returncode == 0 and out.read_text().startswith(f"# Conversation #{conv_id}")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
