"""The platform-neutral message splitter: limits, paragraph boundaries, code blocks kept whole or reopened."""

from __future__ import annotations

import random
import re

import pytest

from adapters.textsplit import split_message

FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})(.*)$")


def fences_balanced(message: str) -> bool:
    """Every fence opened in the message is closed in it."""
    open_marker: str | None = None
    for line in message.split("\n"):
        found = FENCE.match(line)
        if not found:
            continue
        marker, info = found.group(1), found.group(2).strip()
        if marker[0] == "`" and "`" in info:
            continue  # inline code, not a fence
        if open_marker is None:
            open_marker = marker
        elif marker[0] == open_marker[0] and len(marker) >= len(open_marker) and not info:
            open_marker = None
    return open_marker is None


def words(text: str) -> list[str]:
    """The words of the text outside fence lines (fences may be added when code is split)."""
    return [w for line in text.split("\n") if not FENCE.match(line) for w in line.split()]


def check(text: str, limit: int) -> list[str]:
    messages = split_message(text, limit)
    assert all(len(m) <= limit for m in messages), [len(m) for m in messages]
    assert all(fences_balanced(m) for m in messages)
    assert all(m.strip() for m in messages)
    return messages


def test_short_text_is_returned_unchanged() -> None:
    text = "  Hello **there**\n\n```py\nx = 1\n```\n"
    assert split_message(text, 100) == [text]


def test_empty_text_is_no_message() -> None:
    assert split_message("", 100) == []
    assert split_message(" \n\n ", 100) == []


def test_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError):
        split_message("hello", 10)


def test_cuts_between_paragraphs() -> None:
    paragraphs = [f"Paragraph {n} " + "word " * 15 for n in range(12)]
    paragraphs = [p.strip() for p in paragraphs]
    text = "\n\n".join(paragraphs)
    messages = check(text, 250)
    assert len(messages) > 1
    for message in messages:
        # Each message is whole paragraphs, in order.
        for part in message.split("\n\n"):
            assert part in paragraphs
    assert "\n\n".join(messages) == text


def test_code_block_that_fits_is_moved_whole_to_the_next_message() -> None:
    intro = "Intro " + "x" * 150
    code = "```python\n" + "\n".join(f"print({n})" for n in range(15)) + "\n```"
    text = f"{intro}\n\n{code}\n\nAfter."
    messages = check(text, 250)
    assert messages[0] == intro
    assert code in messages[1]
    assert words("\n\n".join(messages)) == words(text)


def test_code_block_longer_than_the_limit_is_closed_and_reopened_with_its_language() -> None:
    body = [f"    total += compute({n})  # step {n}" for n in range(60)]
    text = "Here it is:\n\n```python\ndef f():\n" + "\n".join(body) + "\n```\n\nThat is all."
    messages = check(text, 400)
    code_parts = [m for m in messages if "```python" in m]
    assert len(code_parts) >= 4
    for part in code_parts:
        code = part[part.index("```python") :].split("\n\n")[0]
        assert code.split("\n")[0] == "```python"
        assert code.split("\n")[-1] == "```"
    # The code lines come back in order, none lost, none duplicated, indentation kept.
    code_lines = []
    for part in code_parts:
        inside = part[part.index("```python") :].split("\n\n")[0].split("\n")[1:-1]
        code_lines.extend(inside)
    assert code_lines == ["def f():", *body]
    assert words("\n\n".join(messages)) == words(text)


def test_single_paragraph_longer_than_the_limit_is_cut_between_words() -> None:
    text = " ".join(f"word{n}" for n in range(400))
    messages = check(text, 300)
    assert len(messages) > 1
    assert " ".join(messages).split() == text.split()
    for message in messages:
        assert not message.startswith(" ") and not message.endswith(" ")


def test_paragraph_with_lines_is_cut_between_lines_first() -> None:
    lines = [f"- item {n}: " + "detail " * 5 for n in range(40)]
    text = "\n".join(line.strip() for line in lines)
    messages = check(text, 300)
    for message in messages:
        for line in message.split("\n"):
            assert line.startswith("- item ")
    assert "\n".join(messages) == text


def test_line_longer_than_the_limit_without_spaces_is_cut_anywhere() -> None:
    text = "start\n\n" + "x" * 1000 + "\n\nend"
    messages = check(text, 300)
    assert "".join(words("\n".join(messages))) == "".join(words(text))


def test_code_line_longer_than_the_limit_is_cut_inside_its_block() -> None:
    text = "```\n" + "y" * 1000 + "\n```"
    messages = check(text, 200)
    assert len(messages) >= 5
    assert "".join(m.split("\n")[1] for m in messages) == "y" * 1000


def test_tilde_fences_and_longer_backtick_fences() -> None:
    inner = "```\nnot the end\n```"
    text = "~~~markdown\n" + "\n".join([inner] * 20) + "\n~~~"
    messages = check(text, 200)
    assert all(m.startswith("~~~markdown\n") and m.endswith("\n~~~") for m in messages)
    text = "````\n" + "\n".join([inner] * 20) + "\n````"
    messages = check(text, 200)
    assert all(m.startswith("````\n") and m.endswith("\n````") for m in messages)


def test_unclosed_fence_is_closed_when_split() -> None:
    text = "Look:\n\n```js\n" + "\n".join(f"let v{n} = {n};" for n in range(50))
    messages = check(text, 200)
    assert messages[-1].endswith("```")


def test_inline_triple_backticks_are_not_a_fence() -> None:
    text = ("```inline``` code and words " * 20).strip()
    messages = check(text, 120)
    assert " ".join(messages).split() == text.split()


@pytest.mark.parametrize("seed", range(30))
def test_random_documents_keep_every_word_within_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    parts = []
    for _ in range(rng.randint(5, 40)):
        kind = rng.random()
        if kind < 0.5:
            parts.append(" ".join(f"w{rng.randint(0, 999)}" for _ in range(rng.randint(1, 300))))
        elif kind < 0.8:
            language = rng.choice(["", "python", "sql", "c++"])
            body = "\n".join(
                "  " * rng.randint(0, 3) + "c" * rng.randint(0, 120) for _ in range(rng.randint(0, 60))
            )
            parts.append(f"```{language}\n{body}\n```")
        else:
            parts.append("\n".join(f"* item {n}" for n in range(rng.randint(1, 30))))
    text = ("\n\n" if rng.random() < 0.7 else "\n").join(parts)
    limit = rng.choice([200, 500, 2000, 3900])
    messages = check(text, limit)
    assert words("\n".join(messages)) == words(text)
