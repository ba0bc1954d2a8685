"""The seams the engine is written against: the model, the history store and the document search.

Each is a small protocol; `bot/inference`, `storage/` and `retrieval/` implement them, and the
engine never imports those.
"""

from bot.seams.history import (
    Conversation,
    ConversationKey,
    Feedback,
    History,
    NewMessage,
    StoredMessage,
    UserRef,
)
from bot.seams.model import ChatModel, Chunk, Finish, FinishReason, Queued
from bot.seams.retriever import GLOBAL_SCOPE, Passage, Retriever, scopes_for

__all__ = [
    "GLOBAL_SCOPE",
    "ChatModel",
    "Chunk",
    "Conversation",
    "ConversationKey",
    "Feedback",
    "Finish",
    "FinishReason",
    "History",
    "NewMessage",
    "Passage",
    "Queued",
    "Retriever",
    "StoredMessage",
    "UserRef",
    "scopes_for",
]
