"""Prompt tokenization with the conversation's earlier turns from a cache, on real tokenizers."""

from __future__ import annotations

from typing import Any

import pytest

from bot.inference.local import TokenPrefixes
from bot.inference.weights import EMBEDDED, prepare_model
from config import load_settings

TURNS = [
    ("What is a linked list?", "A chain of nodes, each pointing at the next."),
    ("And an array?", "A block of memory holding items side by side.\n\nIndexing is O(1)."),
    ("Show me <b>HTML</b> and  two  spaces", "```python\nprint('hi')\n```"),
    ("Tabs\tand unicode: naïve café 漢字 🙂", "Sure — here:\n\n- one\n- two"),
    ("What did I say about <|im_start|> tokens?", "You wrote a literal marker."),
]


def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    settings = load_settings(model={"name": name})
    if name != "smollm2-135m-instruct" and not EMBEDDED[name].locate_parts():
        pytest.skip(f"{name} is not installed here")
    path = prepare_model(settings.model, settings.model_cache_dir, progress=False)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


class CountingTokenizer:
    """The real tokenizer, counting the characters it is asked to tokenize."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.added_tokens_decoder = tokenizer.added_tokens_decoder
        self.characters = 0

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.characters += len(text)
        return self.tokenizer(text, **kwargs)


@pytest.mark.model
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_a_growing_conversation_tokenizes_as_a_whole_but_only_its_new_turn_each_time(name: str) -> None:
    tokenizer = _tokenizer(name)
    counting = CountingTokenizer(tokenizer)
    prefixes = TokenPrefixes(counting)
    system = "You are helpful. " * 100
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    previous = ""
    for question, answer in TURNS:
        messages.append({"role": "user", "content": question})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        counting.characters = 0
        ids = prefixes.encode(text)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        if previous:  # after the first turn: the last answer, the new question and the marks only
            assert counting.characters < len(previous) + len(question) + 120 < len(system)
        messages.append({"role": "assistant", "content": answer})
        previous = answer


@pytest.mark.model
def test_another_conversation_or_an_edited_one_is_tokenized_whole() -> None:
    tokenizer = _tokenizer("smollm2-135m-instruct")
    prefixes = TokenPrefixes(tokenizer)

    def render(*contents: str) -> str:
        roles = ["user", "assistant"] * 3
        chat = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)]
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))

    for text in (
        render("hello", "hi", "how are you?"),
        render("hello", "HI", "how are you?"),
        render("other"),
    ):
        assert prefixes.encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
