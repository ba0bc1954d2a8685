"""Retrieval from the team's documents: loaders, splitters, offline embeddings and the Chroma store.

Import the parts from their modules (`retrieval.store.DocumentStore`, ...): importing this package
loads nothing heavy.
"""
