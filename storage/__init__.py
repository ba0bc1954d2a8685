"""The history store: SQLAlchemy models, the store, and migrations."""

from storage.store import SqlHistory

__all__ = ["SqlHistory"]
