"""The error tree: every error chinwag raises on purpose is a ChinwagError with a one-line message."""

from __future__ import annotations


class ChinwagError(Exception):
    """Base of our errors; `str(error)` is fit to show to a user."""


class ModelError(ChinwagError):
    """The model could not be found, prepared, loaded or run."""


class ModelNotFoundError(ModelError):
    """No model by that name or path."""


class ModelIntegrityError(ModelError):
    """A model file does not match its expected size or checksum."""


class InputError(ChinwagError):
    """The user's input cannot be answered as it is (empty, too long)."""


class CommandError(ChinwagError):
    """A /command was unknown or its arguments invalid."""


class ConversationNotFoundError(ChinwagError):
    """No stored conversation with that id."""


class BusyError(ChinwagError):
    """The model's queue is full (or it is shutting down): try again in a moment."""
