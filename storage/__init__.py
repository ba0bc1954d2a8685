"""The history store: SQLAlchemy models, the store, and migrations."""
