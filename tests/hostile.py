"""Tools that misbehave, importable by the tool worker process (isolated tools are run by name)."""

from __future__ import annotations


def hog(digits: int) -> str:
    """Compute 10**digits and say how many bits it has: C code that holds the interpreter's lock.

    Args:
        digits: how many decimal digits.
    """
    return str((10**digits).bit_length())


def crash(code: int) -> str:
    """Exit the process at once.

    Args:
        code: its exit code.
    """
    import os

    os._exit(code)
