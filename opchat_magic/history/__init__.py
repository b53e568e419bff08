"""A notebook's chat history: the model (threads, turns, retry, trim), the
SQLite store (which knows only the model), and the writer thread between them.
"""
from .model import (
    STATUSES,
    Blobs,
    Conversation,
    EmptyMessageError,
    HistoryNotSavedWarning,
    Message,
    Thread,
    Turn,
    TurnStateError,
    UnknownThreadError,
)
from .store import Store, StoreError, default_path, notebook_key

__all__ = [
    "Message", "Blobs", "Turn", "Thread", "Conversation", "STATUSES",
    "EmptyMessageError", "UnknownThreadError", "TurnStateError", "HistoryNotSavedWarning",
    "Store", "StoreError", "default_path", "notebook_key",
]
