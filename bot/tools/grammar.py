"""The grammar of a tool call, checked one character at a time, for constrained decoding.

Once a reply starts like a call (`<tool_call>`, a ```json fence or a bare `{`, then `"name"`),
the rest must be `{"name": <a real tool>, "arguments": <an object valid for its schema>}`,
then the wrapper's closing mark, then the end of the reply. Anything that starts otherwise
(prose, a ```python block, a JSON object whose first key is not "name") *releases* the grammar:
from there the reply is free text, as if unconstrained, so a reply that is not a call is never
forced into one. Once `{"name"` is written the reply is a call: an invented tool name cannot
be finished, so the model writes the most likely real one.

States are immutable tuples, so a decoder can try a candidate token on a state and drop the
result; `feed` returns the new state, `None` (the text cannot continue a call) or `RELEASED`.
Only what JSON Schema features function signatures produce are enforced (types, enums,
required and known properties, arrays, Optional); anything else accepts any JSON value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

RELEASED: Final = "released"
"""The reply is not a tool call: nothing more is enforced."""

# Runs of whitespace between JSON tokens longer than this are refused: a constrained model can
# otherwise loop on newlines forever.
_MAX_SPACE = 24
_SPACE = " \t\n\r"
_DIGITS = "0123456789"
_FENCE_LANGUAGES = ("", "json", "tool_call", "tool")

Node = tuple[Any, ...]
Frame = tuple[Any, ...]
State = tuple[int, tuple[Frame, ...]]
Result = State | None | str

_ANY: Node = ("any",)


def compile_schema(schema: Any) -> Node:
    """A JSON Schema as the node the grammar walks (unknown features: any value)."""
    if not isinstance(schema, dict):
        return _ANY
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return ("string", tuple(json.dumps(v)[1:-1] for v in schema["enum"]))
    if "const" in schema and isinstance(schema["const"], str):
        return ("string", (json.dumps(schema["const"])[1:-1],))
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return ("union", tuple(compile_schema(s) for s in schema[key]))
    kind = schema.get("type")
    if isinstance(kind, list):
        return ("union", tuple(compile_schema({**schema, "type": k}) for k in kind))
    if kind == "string":
        return ("string", None)
    if kind in ("integer", "number"):
        return ("number", kind == "integer")
    if kind == "boolean":
        return ("boolean",)
    if kind == "null":
        return ("null",)
    if kind == "array":
        return ("array", compile_schema(schema.get("items")))
    if kind == "object" or "properties" in schema:
        properties = {
            json.dumps(name)[1:-1]: compile_schema(sub)
            for name, sub in (schema.get("properties") or {}).items()
        }
        extra = schema.get("additionalProperties", True)
        additional = None if extra is False else compile_schema(extra if isinstance(extra, dict) else {})
        required = frozenset(json.dumps(r)[1:-1] for r in schema.get("required") or [])
        return ("object", properties, required, additional)
    return _ANY


def _starts(node: Node, char: str) -> bool:
    """Whether a value of `node` may begin with `char`."""
    kind = node[0]
    if kind == "any":
        return char in '"-[{tfn' or char in _DIGITS
    if kind == "string":
        return char == '"'
    if kind == "number":
        return char == "-" or char in _DIGITS
    if kind == "boolean":
        return char in "tf"
    if kind == "null":
        return char == "n"
    if kind == "array":
        return char == "["
    if kind == "object":
        return char == "{"
    return any(_starts(option, char) for option in node[1])


class ToolCallGrammar:
    """Checks that a reply is a well-formed call of one of `tools` (OpenAI-style schemas)."""

    def __init__(self, tools: Sequence[dict[str, Any]], required: bool = False) -> None:
        # `required`: the reply must be a call; nothing releases the grammar (structured output).
        self.required = required
        self.arguments: dict[str, Node] = {}
        for schema in tools:
            function = schema.get("function", schema)
            name = function.get("name")
            if isinstance(name, str) and name:
                parameters = function.get("parameters") or {"type": "object", "properties": {}}
                self.arguments[json.dumps(name)[1:-1]] = compile_schema(parameters)
        self.names = tuple(self.arguments)

    def start(self) -> State:
        """The state before the first character of a reply."""
        return (0, (("top", "lead", "", ""),))

    def feed(self, state: Result, text: str) -> Result:
        """The state after `text`; None if `text` cannot follow; RELEASED once the reply is not a call."""
        for char in text:
            if state is None or state == RELEASED:
                return state
            assert not isinstance(state, str)
            state = self._char(state, char)
        return state

    def complete(self, state: Result) -> bool:
        """Whether the reply may end here (a whole call was written, or the reply is free text)."""
        if state == RELEASED:
            return True
        if state is None or isinstance(state, str):
            return False
        frames = state[1]
        ends = ("done",) if self.required else ("done", "lead")
        return len(frames) == 1 and frames[0][1] in ends

    # One character -------------------------------------------------------------------

    def _char(self, state: State, char: str) -> Result:
        space, frames = state
        frame = frames[-1]
        if char in _SPACE and self._space_ok(frame):
            if space >= _MAX_SPACE:
                return None
            return (space + 1, frames)
        result = getattr(self, "_" + frame[0])(frames, frame, char)
        if result == RELEASED and self.required:
            return None
        if result is None or result == RELEASED:
            return result
        return (0, result)

    def _space_ok(self, frame: Frame) -> bool:
        """Whether whitespace may come next in this frame (between tokens, not inside one)."""
        kind = frame[0]
        if kind == "top":
            return frame[1] in ("lead", "pre", "post")
        if kind == "call":
            return frame[2] == ""
        # Inside a string, a number or true/false/null, a space is the frame's own business.
        return kind not in ("string", "number", "literal")

    def _done(self, frames: tuple[Frame, ...], value: str | None) -> tuple[Frame, ...] | str | None:
        """Pop the finished frame and tell its parent (keys and names are passed up)."""
        frames = frames[:-1]
        parent = frames[-1]
        kind = parent[0]
        if kind == "call":
            step = parent[1]
            if step == 2:
                return (*frames[:-1], ("call", 3, "", value))
            if step == 6:
                return (*frames[:-1], ("call", 7, "", parent[3]))
            return frames
        if kind == "object" and parent[5] == "key":
            _, properties, required, additional, seen, _phase = parent
            return (
                *frames[:-1],
                ("object", properties, required, additional, seen | {value}, "colon:" + str(value)),
            )
        if kind == "top":
            wrapper = parent[3]
            return (("top", "done" if wrapper == "bare" else "post", "", wrapper),)
        return frames

    # Frames --------------------------------------------------------------------------------

    def _top(self, frames: tuple[Frame, ...], frame: Frame, char: str) -> Any:
        _, phase, buffer, wrapper = frame
        if phase == "lead":
            if char == "{":
                return (("top", "body", "", "bare"), ("call", 0, "", None))
            if char in "<`":
                return (("top", "open", char, ""),)
            return RELEASED
        if phase == "open":
            text = buffer + char
            if text.startswith("<"):
                if not "<tool_call>".startswith(text):
                    return RELEASED
                if text == "<tool_call>":
                    return (("top", "pre", "", "tag"),)
                return (("top", "open", text, ""),)
            if len(text) <= 3:
                return (("top", "open", text, ""),) if char == "`" else RELEASED
            # After the fence: a language, then a newline.
            language = text[3:]
            if char == "\n":
                if language[:-1].strip() in _FENCE_LANGUAGES:
                    return (("top", "pre", "", "fence"),)
                return RELEASED
            if not any(option.startswith(language.strip()) for option in _FENCE_LANGUAGES):
                return RELEASED
            return (("top", "open", text, ""),)
        if phase == "pre":
            if char == "{":
                return (("top", "body", "", wrapper), ("call", 0, "", None))
            return RELEASED
        if phase == "post":
            closing = "</tool_call>" if wrapper == "tag" else "```"
            text = buffer + char
            if not closing.startswith(text):
                return None
            return (("top", "done" if text == closing else "post", "" if text == closing else text, wrapper),)
        return None  # done: only the end of the reply may follow

    _CALL_STEPS: Final = ('"name"', ":", None, ",", '"arguments"', ":", None, "}")

    def _call(self, frames: tuple[Frame, ...], frame: Frame, char: str) -> Any:
        _, step, buffer, name = frame
        literal = self._CALL_STEPS[step]
        if literal is None:
            if step == 2:
                # Committed to a call: the name can only be a real tool's.
                return (*frames, ("string", self.names, "", 0, False)) if char == '"' else None
            node = self.arguments.get(name or "", _ANY)
            return self._value(frames, node, char)
        text = buffer + char
        if not literal.startswith(text):
            # A first key other than "name": ordinary JSON, not a call ('name' is a call
            # written Python-style, and gets its double quotes).
            return RELEASED if step == 0 and char != "'" else None
        if text != literal:
            return (*frames[:-1], ("call", step, text, name))
        if step == 7:
            return self._done(frames, None)
        return (*frames[:-1], ("call", step + 1, "", name))

    def _value(self, frames: tuple[Frame, ...], node: Node, char: str) -> Any:
        """Start a value of `node` with `char` (the frame for it is pushed on `frames`)."""
        if node[0] == "union":
            options = [option for option in node[1] if _starts(option, char)]
            if not options:
                return None
            # Prefer a typed alternative to "any" (Optional[int] is number-or-null).
            node = next((option for option in options if option[0] != "any"), options[0])
        if not _starts(node, char):
            return None
        kind = node[0]
        if kind == "any":
            if char == '"':
                node = ("string", None)
            elif char == "[":
                node = ("array", _ANY)
            elif char == "{":
                node = ("object", {}, frozenset(), _ANY)
            elif char in "tfn":
                return (*frames, ("literal", {"t": "rue", "f": "alse", "n": "ull"}[char]))
            else:
                node = ("number", False)
            kind = node[0]
        if kind == "string":
            return (*frames, ("string", node[1], "", 0, False))
        if kind == "number":
            return self._number((*frames, ("number", node[1], "")), ("number", node[1], ""), char)
        if kind == "boolean":
            return (*frames, ("literal", "rue" if char == "t" else "alse"))
        if kind == "null":
            return (*frames, ("literal", "ull"))
        if kind == "array":
            return (*frames, ("array", node[1], "start"))
        _, properties, required, additional = node
        return (*frames, ("object", properties, required, additional, frozenset(), "start"))

    def _string(self, frames: tuple[Frame, ...], frame: Frame, char: str) -> Any:
        _, options, buffer, escape, release = frame
        if escape:
            if escape == 1:
                if char not in '"\\/bfnrtu':
                    return None
                escape = 2 if char == "u" else 0
            else:
                if char not in "0123456789abcdefABCDEF":
                    return None
                escape = 0 if escape == 5 else escape + 1
        elif char == '"':
            if options is not None and buffer not in options:
                return RELEASED if release else None
            return self._done(frames, buffer)
        elif char == "\\":
            escape = 1
        elif ord(char) < 0x20:
            return None
        text = buffer + char
        if options is not None and not any(option.startswith(text) for option in options):
            return RELEASED if release else None
        return (*frames[:-1], ("string", options, text, escape, release))

    def _number(self, frames: tuple[Frame, ...], frame: Frame, char: str) -> Any:
        _, integer, buffer = frame
        text = buffer + char
        if _number_prefix(text, integer):
            return (*frames[:-1], ("number", integer, text))
        if not _number_complete(buffer):
            return None
        # The number ended: the character belongs to the parent.
        popped = self._done(frames, None)
        if popped is None or isinstance(popped, str):
            return popped
        result = self._char((0, popped), char)
        return result if result is None or isinstance(result, str) else result[1]

    def _literal(self, frames: tuple[Frame, ...], frame: Frame, char: str) -> Any:
        rest = frame[1]
        if char != rest[0]:
            return None
        if len(rest) == 1:
            return self._done(frames, None)
        return (*frames[:-1], ("literal", rest[1:]))

    def _array(self, frames: tuple[Frame, ...], frame: Frame, char: str) -> Any:
        _, item, phase = frame
        if char == "]" and phase in ("start", "after"):
            return self._done(frames, None)
        if phase == "after":
            return (*frames[:-1], ("array", item, "comma")) if char == "," else None
        return self._value((*frames[:-1], ("array", item, "after")), item, char)

    def _object(self, frames: tuple[Frame, ...], frame: Frame, char: str) -> Any:
        _, properties, required, additional, seen, phase = frame
        keys = tuple(k for k in properties if k not in seen)
        if phase in ("start", "comma"):
            if char == "}" and phase == "start" and required <= seen:
                return self._done(frames, None)
            if char != '"' or (not keys and additional is None):
                return None
            options = keys if additional is None else None
            return (
                *frames[:-1],
                ("object", properties, required, additional, seen, "key"),
                ("string", options, "", 0, False),
            )
        if phase.startswith("colon:"):
            if char != ":":
                return None
            return (*frames[:-1], ("object", properties, required, additional, seen, "value:" + phase[6:]))
        if phase.startswith("value:"):
            key = phase[6:]
            node = properties.get(key, additional or _ANY)
            return self._value(
                (*frames[:-1], ("object", properties, required, additional, seen, "after")), node, char
            )
        if phase == "after":
            if char == "}" and required <= seen:
                return self._done(frames, None)
            if char == "," and (keys or additional is not None):
                return (*frames[:-1], ("object", properties, required, additional, seen, "comma"))
            return None
        return None


def _number_prefix(text: str, integer: bool) -> bool:
    """Whether `text` can begin a JSON number (an integer when `integer`)."""
    i = 0
    if text[i : i + 1] == "-":
        i += 1
    if i == len(text):
        return True
    if text[i] == "0":
        i += 1
    elif text[i] in _DIGITS:
        while i < len(text) and text[i] in _DIGITS:
            i += 1
    else:
        return False
    if i == len(text):
        return True
    if integer:
        return False
    if text[i] == ".":
        i += 1
        if i == len(text):
            return True
        start = i
        while i < len(text) and text[i] in _DIGITS:
            i += 1
        if i == start:
            return False
        if i == len(text):
            return True
    if text[i] in "eE":
        i += 1
        if i < len(text) and text[i] in "+-":
            i += 1
        while i < len(text) and text[i] in _DIGITS:
            i += 1
        return i == len(text)
    return False


def _number_complete(text: str) -> bool:
    """Whether `text` is a whole JSON number."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return bool(text) and text[-1] in _DIGITS
