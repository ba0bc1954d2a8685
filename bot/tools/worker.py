"""A worker process for isolated tools: `python -m bot.tools.worker`, driven by `ToolRunner`.

Reads calls (module, function name, arguments) as length-prefixed pickles on stdin, answers each
with ("ok", value), ("tool_error", message) or ("failed", exception type) on stdout. Only the
parent writes to its stdin; it exits when that closes.
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import sys
from typing import Any, BinaryIO

from bot.errors import ToolError

_FRAME = struct.Struct("!I")


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    """Answer calls until `source` ends."""
    _send(sink, "ready")
    while True:
        header = source.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return
        module, name, arguments = pickle.loads(source.read(_FRAME.unpack(header)[0]))
        try:
            function: Any = importlib.import_module(module)
            for part in name.split("."):
                function = getattr(function, part)
            answer: tuple[str, Any] = ("ok", function(**arguments))
        except ToolError as error:
            answer = ("tool_error", str(error))
        except Exception as error:  # told to the parent, which turns it into a tool error
            answer = ("failed", type(error).__name__)
        try:
            _send(sink, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            _send(sink, ("failed", f"unpicklable result: {type(error).__name__}"))


def _send(sink: BinaryIO, value: Any) -> None:
    data = pickle.dumps(value)
    sink.write(_FRAME.pack(len(data)) + data)
    sink.flush()


if __name__ == "__main__":
    # The answers get stdout's descriptor to themselves: a tool that prints writes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)
