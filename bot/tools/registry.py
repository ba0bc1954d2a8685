"""Tools the model may call: plain typed functions whose JSON schema comes from their signature.

A tool is a function with type hints and a docstring (first line: what it does; `name: text` lines
under "Args:" describe parameters). `Tool.from_function` builds a pydantic model from the signature:
its JSON schema goes to the chat template (`tools=`), and it validates the arguments the model
produced, with messages a small model can act on.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from bot.errors import ChinwagError, ToolError


@dataclass(frozen=True)
class Tool:
    """A callable the model may use, with its schema and policy."""

    name: str
    description: str
    function: Callable[..., Any]
    arguments: type[BaseModel]
    needs_approval: bool = False
    timeout_s: float = 10.0
    # Its arguments may leave chinwag (a web request, a message, a write): such calls must not
    # carry what the model only read in the conversation (see bot/tools/guard.py).
    outbound: bool = True
    # CPU-bound: run in a worker process that is killed at the deadline (module-level functions).
    isolated: bool = False

    @classmethod
    def from_function(
        cls,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        needs_approval: bool = False,
        timeout_s: float = 10.0,
        outbound: bool = True,
        isolated: bool = False,
    ) -> Tool:
        """A tool from a typed function with a docstring; no hand-written schema."""
        if isolated and ("<locals>" in function.__qualname__ or inspect.iscoroutinefunction(function)):
            raise ValueError(f"tool {function.__name__}: only module-level plain functions can be isolated")
        doc = inspect.getdoc(function) or ""
        summary = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
        if not summary:
            raise ValueError(f"tool {function.__name__} needs a docstring saying what it does")
        described = _arg_descriptions(doc)
        fields: dict[str, Any] = {}
        for param in inspect.signature(function, eval_str=True).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ValueError(f"tool {function.__name__}: *args/**kwargs cannot be described to a model")
            if param.annotation is inspect.Parameter.empty:
                raise ValueError(f"tool {function.__name__}: parameter {param.name} has no type hint")
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (param.annotation, Field(default, description=described.get(param.name)))
        model = create_model(  # type: ignore[call-overload]
            f"{function.__name__}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        return cls(
            name or function.__name__, summary, function, model, needs_approval, timeout_s, outbound, isolated
        )

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema chat templates take in `tools=`."""
        parameters = self.arguments.model_json_schema()
        parameters.pop("title", None)
        for prop in parameters.get("properties", {}).values():
            prop.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }

    def validate(self, arguments: Any) -> dict[str, Any]:
        """Checked, converted arguments; a ToolError says what is wrong in one line."""
        if not isinstance(arguments, dict):
            raise ToolError(f"{self.name}: arguments must be a JSON object, got {type(arguments).__name__}")
        # Small models copy schema words ("type": "string") into calls: unknown keys are dropped,
        # while missing or mistyped parameters still fail.
        known = self.arguments.model_fields
        arguments = {key: value for key, value in arguments.items() if key in known}
        try:
            return self.arguments.model_validate(arguments).model_dump()
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in item['loc']) or 'arguments'}: {item['msg']}"
                for item in error.errors()
            )
            raise ToolError(f"{self.name}: invalid arguments ({problems})") from None


@dataclass
class ToolRegistry:
    """The tools available in one place (a scope), by name."""

    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        """Register a tool; names are unique."""
        if tool.name in self.tools:
            raise ValueError(f"two tools are named {tool.name}")
        self.tools[tool.name] = tool

    def get(self, name: str) -> Tool:
        """The tool called `name`, or a ToolError listing the real ones."""
        found = self.tools.get(name)
        if found is None:
            known = ", ".join(sorted(self.tools)) or "none"
            raise ToolError(f"There is no tool named {name!r}; the tools are: {known}")
        return found

    def schemas(self) -> list[dict[str, Any]]:
        """Every tool's schema, for the chat template."""
        return [tool.schema() for tool in self.tools.values()]

    def only(self, names: Sequence[str]) -> ToolRegistry:
        """A registry with just these tools (unknown names are ignored)."""
        return ToolRegistry({n: t for n, t in self.tools.items() if n in names})


def tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    needs_approval: bool = False,
    timeout_s: float = 10.0,
    outbound: bool = True,
    isolated: bool = False,
) -> Any:
    """Mark a function in an operator's module as a tool, with options (usable bare: `@tool`).

    `outbound=False` declares that its arguments never leave the process (a pure computation), so
    text from earlier turns or tool results may flow into them; `isolated=True` runs it in a worker
    process that is killed at its deadline.
    """

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__chinwag_tool__ = {  # type: ignore[attr-defined]
            "name": name,
            "needs_approval": needs_approval,
            "timeout_s": timeout_s,
            "outbound": outbound,
            "isolated": isolated,
        }
        return fn

    return mark(function) if function is not None else mark


ENTRY_POINT_GROUP = "chinwag.tools"


def tools_from_entry_points(group: str = ENTRY_POINT_GROUP) -> list[Tool]:
    """Tools installed packages offer through entry points: a module, a function or a `Tool`.

    In a package's pyproject.toml: `[project.entry-points."chinwag.tools"] acme = "acme.tools"`.
    """
    from importlib.metadata import entry_points

    found: list[Tool] = []
    for point in entry_points(group=group):
        try:
            value = point.load()
        except Exception as error:
            raise ChinwagError(
                f"tool entry point {point.name!r} ({point.value}): cannot load it "
                f"({type(error).__name__}: {error})"
            ) from None
        if inspect.ismodule(value):
            found += tools_from_module(value.__name__)
        elif isinstance(value, Tool):
            found.append(value)
        elif inspect.isfunction(value):
            try:
                found.append(_marked_tool(value))
            except ValueError as error:
                raise ChinwagError(f"tool entry point {point.name!r}: {error}") from None
        else:
            raise ChinwagError(
                f"tool entry point {point.name!r} ({point.value}) is not a module, a function or a Tool"
            )
    return found


def tools_from_module(module_name: str) -> list[Tool]:
    """The tools an operator's module offers: functions marked with `@tool`, else its public functions."""
    import importlib

    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ChinwagError(
            f"tools.modules: cannot import {module_name!r} ({type(error).__name__}: {error})"
        ) from None
    functions = [
        value
        for key, value in vars(module).items()
        if inspect.isfunction(value) and value.__module__ == module.__name__ and not key.startswith("_")
    ]
    marked = [f for f in functions if hasattr(f, "__chinwag_tool__")]
    found = []
    for function in marked or functions:
        try:
            found.append(_marked_tool(function))
        except ValueError as error:
            raise ChinwagError(f"tools.modules: {module_name}.{function.__name__}: {error}") from None
    return found


def _marked_tool(function: Callable[..., Any]) -> Tool:
    """A tool from a function, with the options its `@tool` mark gives (if any)."""
    options = getattr(function, "__chinwag_tool__", {})
    return Tool.from_function(
        function,
        name=options.get("name"),
        needs_approval=options.get("needs_approval", False),
        timeout_s=options.get("timeout_s", 10.0),
        outbound=options.get("outbound", True),
        isolated=options.get("isolated", False),
    )


def _arg_descriptions(doc: str) -> dict[str, str]:
    """`name: text` lines of a Google-style "Args:" section."""
    match = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.MULTILINE)
    if not match:
        return {}
    found: dict[str, str] = {}
    indent: int | None = None
    current: str | None = None
    for line in match.group(1).splitlines():
        depth = len(line) - len(line.lstrip())
        item = re.match(r"\s+(\w+)(?:\s*\([^)]*\))?:\s*(.+)", line)
        if item and (indent is None or depth <= indent):
            indent, current = depth, item.group(1)
            found[current] = item.group(2).strip()
        elif current is not None and line.strip():
            # A description that goes on over more lines.
            found[current] += " " + line.strip()
    return found
