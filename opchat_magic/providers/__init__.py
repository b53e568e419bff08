"""Async generator providers: the same interface for every backend."""
from .base import AsyncGeneratorProvider, Reply, ReplyStream, Usage

__all__ = ["AsyncGeneratorProvider", "Reply", "ReplyStream", "Usage"]
