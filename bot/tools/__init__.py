"""Tools the model may call: the registry, the built-ins, the HTTP tool, call parsing and its grammar.

Operators' own tool modules import `tool` (and `Tool`, `ToolError`) from here.
"""

from bot.tools.registry import Tool, ToolError, ToolRegistry, tool

__all__ = ["Tool", "ToolError", "ToolRegistry", "tool"]
