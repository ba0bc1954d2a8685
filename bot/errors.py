"""The error tree: every error chinwag raises on purpose is a ChinwagError with a one-line message.

This module imports nothing, so every package (config, retrieval and storage included) can raise
from the same tree without depending on anything else in `bot`.
"""

from __future__ import annotations


class ChinwagError(Exception):
    """Base of our errors; `str(error)` is fit to show to a user."""


class ConfigError(ChinwagError):
    """The configuration is invalid; the message names the key at fault."""


class ModelError(ChinwagError):
    """The model could not be found, prepared, loaded or run."""


class ModelNotFoundError(ModelError):
    """No model by that name or path."""


class ModelIntegrityError(ModelError):
    """A model file does not match its expected size or checksum."""


class ModelServerError(ModelError):
    """The model server did not answer (down, timing out, busy, failing) or refused the request."""


class KernelError(ChinwagError):
    """chinwag's CPU kernels could not be built or loaded here (the message says why)."""


class BusyError(ChinwagError):
    """The model's queue is full (or it is shutting down): try again in a moment."""


class CommandError(ChinwagError):
    """A /command was unknown or its arguments invalid."""


class ConversationNotFoundError(ChinwagError):
    """No stored conversation with that id."""


class ToolError(ChinwagError):
    """A tool call could not be made: unknown tool, invalid arguments, failure or timeout."""


class RetrievalError(ChinwagError):
    """The document store could not be opened or used."""


class DocumentsUnavailableError(RetrievalError):
    """The document store did not answer or refused (a Chroma server down, unreachable, or
    refusing the credentials); it is asked again next time."""


class EmbeddingError(RetrievalError):
    """The embedding model could not be found or run."""


class LoadError(RetrievalError):
    """A file that could not be read (the message names the file and the reason)."""


class UnsupportedFileError(LoadError):
    """A file type we do not ingest."""


class TaskError(ChinwagError):
    """A language task (summarise, translate, extract, a custom command) cannot run on this input:
    nothing to read, too much of it, an unknown language, a channel the bot cannot read."""
