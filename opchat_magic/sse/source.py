"""Byte chunks to events: the line and event decoders chained over a stream."""
from __future__ import annotations

from typing import AsyncIterable, AsyncIterator, Iterable, Iterator

from .events import EventDecoder
from .lines import DEFAULT_MAX_LINE_BYTES, LineDecoder
from .models import ServerSentEvent

__all__ = ["aiter_events", "iter_events"]

# End of stream, per the spec: "If the file ends in the middle of an event,
# before the final empty line, the incomplete event is not dispatched." So a
# last unterminated line is flushed through the event decoder (an ``id`` or
# ``retry`` in it still counts) but an event without its blank line is dropped.
# A server that closes right after "data: {...}\n" therefore loses that event;
# callers that need a terminal event should treat its absence as truncation.


async def aiter_events(
    chunks: AsyncIterable[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> AsyncIterator[ServerSentEvent]:
    """Decode server-sent events from an async iterable of byte chunks split anywhere.

    Raises :class:`~opchat_magic.errors.SSEDecodeError` on invalid UTF-8 or a line
    over ``max_line_bytes``. An incomplete event at end of stream is discarded.
    """
    lines = LineDecoder(max_line_bytes)
    events = EventDecoder()
    decode_lines = lines.decode
    decode_event = events.decode
    async for chunk in chunks:
        for line in decode_lines(chunk):
            event = decode_event(line)
            if event is not None:
                yield event
    for line in lines.flush():
        decode_event(line)


def iter_events(chunks: Iterable[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[ServerSentEvent]:
    """Synchronous twin of :func:`aiter_events`, for tests and tools."""
    lines = LineDecoder(max_line_bytes)
    events = EventDecoder()
    decode_lines = lines.decode
    decode_event = events.decode
    for chunk in chunks:
        for line in decode_lines(chunk):
            event = decode_event(line)
            if event is not None:
                yield event
    for line in lines.flush():
        decode_event(line)
