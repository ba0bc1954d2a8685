"""The embedded models' tokenizers loaded straight from tokenizer.json equal transformers' own."""

from __future__ import annotations

import pytest

from bot.inference.local import load_tokenizer
from bot.inference.weights import EMBEDDED, prepare_model
from config import load_settings

# Each case prepares (converts, the first time) a real model.
pytestmark = pytest.mark.slow

TEXTS = [
    "Hello!",
    " leading space",
    "<|im_start|>user\nhi<|im_end|>",
    "a<|im_end|>b<|endoftext|>",
    "naïve café — 漢字 🙂\n\n\tcode()  ",
    "def f(x):\n    return x**2\n",
    "  multiple   spaces ",
    "12345 3.14159 https://example.com/a?b=c",
    '<tool_call>{"name": "x"}</tool_call>',
]


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_the_tokenizer_from_its_file_equals_transformers_own(name: str) -> None:
    from transformers import AutoTokenizer

    if name != "smollm2-135m-instruct" and not EMBEDDED[name].locate_parts():
        pytest.skip(f"{name} is not installed here")
    settings = load_settings(model={"name": name})
    path = prepare_model(settings.model, settings.model_cache_dir, progress=False)
    ours, theirs = load_tokenizer(path), AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert type(ours).__name__ == "TokenizersBackend"  # the direct path, not AutoTokenizer again
    for attribute in ("chat_template", "pad_token_id", "eos_token_id", "bos_token_id", "all_special_tokens"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert len(ours) == len(theirs) and ours.added_tokens_decoder == theirs.added_tokens_decoder
    assert ours.get_vocab() == theirs.get_vocab()
    for text in TEXTS:
        for special in (True, False):
            assert (
                ours(text, add_special_tokens=special)["input_ids"]
                == theirs(text, add_special_tokens=special)["input_ids"]
            )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"},
    ]
    rendered = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == rendered
    ids = theirs(rendered)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    every = [[i] for i in range(0, len(theirs), 7)]
    assert ours.batch_decode(every) == theirs.batch_decode(every)
