"""Retrieval from the team's documents (Chroma); built in a later issue."""
