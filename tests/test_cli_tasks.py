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
