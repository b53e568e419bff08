"""Server-sent events decoding: bytes in, :class:`ServerSentEvent` out.

Layered like httpx-sse, without any I/O library: :class:`LineDecoder` turns
byte chunks into lines, :class:`EventDecoder` turns lines into events, and
:func:`aiter_events` / :func:`iter_events` chain the two over a chunk stream.
"""
from .events import EventDecoder
from .lines import DEFAULT_MAX_LINE_BYTES, LineDecoder
from .models import ServerSentEvent
from .source import aiter_events, iter_events

__all__ = ["ServerSentEvent", "LineDecoder", "EventDecoder", "aiter_events", "iter_events", "DEFAULT_MAX_LINE_BYTES"]
