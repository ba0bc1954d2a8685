"""Constrained decoding of tool calls: the grammar, and the logits processor on real torch tensors."""

from __future__ import annotations

import json

import pytest
import torch

from bot.app import default_tools
from bot.inference.local import ToolCallConstraint
from bot.tools.grammar import RELEASED, ToolCallGrammar, compile_schema


@pytest.fixture(scope="module")
def grammar() -> ToolCallGrammar:
    return ToolCallGrammar(default_tools().schemas())


def outcome(grammar: ToolCallGrammar, text: str) -> str:
    state = grammar.feed(grammar.start(), text)
    if state == RELEASED:
        return "released"
    if state is None:
        return "refused"
    return "complete" if grammar.complete(state) else "open"


@pytest.mark.parametrize(
    "text",
    [
        '```json\n{\n  "name": "calculator",\n  "arguments": {\n    "expression": "1234*5678"\n  }\n}\n```',
        '<tool_call>\n{"name": "clock", "arguments": {}}\n</tool_call>',
        '{"name": "days_between", "arguments": {"start": "2026-01-01", "end": "2026-12-25"}}',
        '  {"name":"clock","arguments":{"timezone":"Asia/Tokyo"}}',
        '{"name": "calculator", "arguments": {"expression": "say \\"hi\\" \\u00e9"}}',
    ],
)
def test_well_formed_calls_are_complete(grammar: ToolCallGrammar, text: str) -> None:
    assert outcome(grammar, text) == "complete"


@pytest.mark.parametrize(
    "text",
    [
        # A required argument missing.
        '{"name": "days_between", "arguments": {"start": "2026-01-01"}}',
        # Schema words copied into the arguments instead of a value.
        '{"name": "calculator", "arguments": {"expression": {"type"',
        # An argument the tool does not have.
        '{"name": "calculator", "arguments": {"type": "string"',
        # An invented tool.
        '{"name": "factorial"',
        # Words after the call.
        '{"name": "clock", "arguments": {}} and then',
        # "arguments" misspelt once committed.
        '{"name": "clock", "parameters"',
        # Not JSON.
        "{'name': 'clock'}",
    ],
)
def test_malformed_calls_are_refused(grammar: ToolCallGrammar, text: str) -> None:
    assert outcome(grammar, text) == "refused"


@pytest.mark.parametrize(
    "text",
    [
        "Hello! How can I help?",
        "```python\ndef reverse(s):\n    return s[::-1]\n```",
        '{"title": "not a call"}',
        "<div>hi</div>",
        "[1, 2, 3]",
    ],
)
def test_replies_that_are_not_calls_are_released(grammar: ToolCallGrammar, text: str) -> None:
    assert outcome(grammar, text) == "released"


def test_prefixes_stay_open(grammar: ToolCallGrammar) -> None:
    full = '```json\n{"name": "calculator", "arguments": {"expression": "2**10"}}\n```'
    for end in range(1, len(full)):
        assert outcome(grammar, full[:end]) in ("open", "complete"), full[:end]


def test_typed_arguments() -> None:
    schema = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "x": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "flag": {"type": "boolean"},
                    "unit": {"enum": ["cm", "in"]},
                },
                "required": ["n"],
                "additionalProperties": False,
            },
        },
    }
    grammar = ToolCallGrammar([schema])
    good = '{"name":"f","arguments":{"n":12,"x":null,"tags":["a","b"],"flag":true,"unit":"cm"}}'
    assert outcome(grammar, good) == "complete"
    assert outcome(grammar, '{"name":"f","arguments":{"x":-1.5e3, "n": 0}}') == "complete"
    for bad in ('"n":1.5', '"n":12 3', '"n":01', '"n":"12"', '"unit":"mm"', '"flag":yes', '"n":1,"n":2'):
        assert outcome(grammar, '{"name":"f","arguments":{' + bad) == "refused", bad


def test_schema_features_it_does_not_know_accept_any_value() -> None:
    node = compile_schema({"not": {"type": "string"}})
    assert node == ("any",)
    grammar = ToolCallGrammar(
        [{"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}]
    )
    assert outcome(grammar, '{"name": "g", "arguments": {"a": [1, {"b": null}], "c": "d"}}') == "complete"


# The logits processor, driven by a scripted preference over a tiny vocabulary -----------------

VOCAB = [
    "{",
    '"name"',
    ":",
    " ",
    ' "',
    "factorial",
    "calculator",
    "clock",
    '",',
    ' "arguments"',
    " {",
    '"expression"',
    '"type"',
    '"15!"',
    "}",
    "Hello",
    "<eos>",
    "\n",
]
EOS = VOCAB.index("<eos>")


def generate(processor: ToolCallConstraint, wants: list[str], steps: int = 30) -> str:
    """Greedy decoding where the "model" always prefers the next token of `wants`."""
    ids = [EOS, EOS, EOS]  # the prompt
    out: list[str] = []
    for step in range(steps):
        scores = torch.zeros(1, len(VOCAB))
        if step < len(wants):
            scores[0, VOCAB.index(wants[step])] = 10.0
        scores[0, EOS] = 5.0 if step >= len(wants) else 1.0
        masked = processor(torch.tensor([ids]), scores)
        token = int(masked[0].argmax())
        if token == EOS:
            break
        ids.append(token)
        out.append(VOCAB[token])
    return "".join(out)


def constraint(grammar: ToolCallGrammar, greedy: bool = True, scan: int = 4) -> ToolCallConstraint:
    return ToolCallConstraint(grammar, VOCAB, [EOS], greedy=greedy, scan=scan)


def test_processor_writes_a_real_tool_and_valid_arguments(grammar: ToolCallGrammar) -> None:
    # The model wants an invented tool and copies schema words into the arguments.
    wants = ["{", '"name"', ":", ' "', "factorial", '",', ' "arguments"', ":", " {", '"type"']
    text = generate(constraint(grammar), wants)
    call = json.loads(text)
    assert call["name"] == "calculator"
    assert set(call["arguments"]) == {"expression"}


def test_processor_leaves_prose_alone(grammar: ToolCallGrammar) -> None:
    processor = constraint(grammar)
    scores = torch.randn(1, len(VOCAB))
    scores[0, VOCAB.index("Hello")] = 9.0
    first = processor(torch.tensor([[EOS]]), scores.clone())
    assert int(first[0].argmax()) == VOCAB.index("Hello")
    processor(torch.tensor([[EOS, VOCAB.index("Hello")]]), scores.clone())
    later = processor(torch.tensor([[EOS, VOCAB.index("Hello"), VOCAB.index("{")]]), scores.clone())
    assert torch.equal(later, scores)  # released: nothing is masked any more


def test_processor_ends_the_reply_after_the_call(grammar: ToolCallGrammar) -> None:
    wants = ["{", '"name"', ":", ' "', "clock", '",', ' "arguments"', ":", " {", "}", "}", "\n", "Hello"]
    assert generate(constraint(grammar), wants) == '{"name": "clock", "arguments": {}}'


def test_processor_sampling_keeps_every_allowed_candidate(grammar: ToolCallGrammar) -> None:
    processor = constraint(grammar, greedy=False, scan=len(VOCAB))
    prompt = [EOS]
    for piece in ("{", '"name"', ":", ' "'):
        processor(torch.tensor([prompt]), torch.zeros(1, len(VOCAB)))
        prompt.append(VOCAB.index(piece))
    masked = processor(torch.tensor([prompt]), torch.zeros(1, len(VOCAB)))
    allowed = {VOCAB[i] for i in torch.isfinite(masked[0]).nonzero().flatten().tolist()}
    assert allowed == {"calculator", "clock"}
