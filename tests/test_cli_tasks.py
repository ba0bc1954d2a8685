"""`chinwag summarize`, `translate` and `actions` as a user runs them (real small model)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli_support import chinwag_bin, cli_env, stored

LOG = """Ana: the nightly backup failed, the bucket policy changed
Raj: I'll restore the old policy today and rerun it
Mei: can someone add an alert when the backup fails?
Raj: sure, I'll add the alert by Friday
"""


def chinwag(data_dir: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chinwag_bin(), *args],
        env=cli_env(data_dir),
        input=input,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.model
def test_summarize_stdin_and_bad_input_are_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = chinwag(data, "summarize", "--json", "-", input=LOG)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["text"].strip() and answer["messages_read"] == 4
    [(conv, messages)] = stored(data)
    assert conv.key.platform == "cli" and messages[0].metadata["read_count"] == 4
    assert "[2] Raj: I'll restore the old policy today and rerun it" in messages[0].content

    (tmp_path / "empty.txt").write_text("\n\n")
    empty = chinwag(data, "summarize", str(tmp_path / "empty.txt"))
    assert (
        empty.returncode == 1
        and empty.stderr.strip() == "chinwag: Nothing to summarise: empty.txt has no messages."
    )
    unknown = chinwag(data, "translate", "--to", "klingon", "-", input="hello")
    assert unknown.returncode == 1 and "I don't know the language 'klingon'" in unknown.stderr
    assert "Traceback" not in empty.stderr + unknown.stderr
    missing = chinwag(data, "actions", str(tmp_path / "nope.txt"))
    assert missing.returncode != 0 and "cannot read" in missing.stderr


@pytest.mark.model
def test_summarize_an_ingested_document_by_id_or_url_after_its_file_is_gone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    notes = tmp_path / "notes.md"
    notes.write_text("# Backup\n\nAna: the nightly backup failed.\n\nRaj: I'll rerun it today.\n")
    assert chinwag(data, "ingest", str(notes)).returncode == 0
    listed = chinwag(data, "docs", "list")
    doc_id = listed.stdout.split()[0]
    notes.unlink()
    for name in (doc_id, notes.resolve().as_uri()):
        done = chinwag(data, "summarize", "--json", name)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["messages_read"] >= 2
    read = [messages[0].content for _, messages in stored(data)]
    assert len(read) == 2 and all("the nightly backup failed" in content for content in read)
    gone = chinwag(data, "summarize", "file:///nowhere/notes.md")
    assert gone.returncode == 1 and "no ingested document has that path" in gone.stderr
    assert "Traceback" not in gone.stderr


@pytest.mark.model
@pytest.mark.slow
def test_a_long_input_shows_a_progress_bar_on_a_terminal_and_lines_elsewhere(tmp_path: Path) -> None:
    import os
    import pty
    import select

    log = "".join(
        f"{('Ana', 'Raj', 'Mei')[n % 3]}: update {n} on the backup job, all fine so far\n" for n in range(90)
    )
    (tmp_path / "long.txt").write_text(log)
    env = cli_env(tmp_path / "data", CHINWAG_TASKS__PIECE_TOKENS="256", CHINWAG_GENERATION__MAX_TOKENS="16")
    env["CHINWAG_TASKS__SUMMARY_TOKENS"] = "32"
    args = [chinwag_bin(), "summarize", str(tmp_path / "long.txt")]
    # stderr a terminal (a pty): one bar redrawn in place, gone when the answer comes.
    leader, follower = pty.openpty()
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    out, _ = process.communicate(timeout=600)
    os.close(leader)
    screen = seen.decode(errors="replace")
    assert process.returncode == 0 and out.strip(), screen
    assert "Reading 90 messages…" in screen and "━" in screen  # the bar, drawn by rich
    assert "\x1b[" in screen  # redrawn in place (cursor moves), not printed line by line
    assert "Traceback" not in screen
    # stderr not a terminal (a file, CI's log): one plain line per part instead.
    piped = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in piped.stderr.splitlines() if "part" in line]
    assert piped.returncode == 0 and len(lines) >= 2 and all("━" not in line for line in lines)
