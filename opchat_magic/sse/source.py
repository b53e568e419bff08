"""Byte chunks to events: the line and event decoders chained over a stream."""
from __future__ import annotations

from typing import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, List, Tuple

from .events import EventDecoder
from .lines import DEFAULT_MAX_LINE_BYTES, LineDecoder
from .models import ServerSentEvent

__all__ = ["aiter_events", "iter_events"]

# End of stream, per the spec: "If the file ends in the middle of an event,
# before the final empty line, the incomplete event is not dispatched." So an
# event without its blank line is dropped. (A last unterminated line could only
# set ``id``/``retry`` on the connection, which ends here with the decoder: only
# the flush's check for a multibyte character cut by the end is left to do.)
# A server that closes right after "data: {...}\n" therefore loses that event;
# callers that need a terminal event should treat its absence as truncation.


def _chain(max_line_bytes: int) -> Tuple[Callable[[bytes], List[ServerSentEvent]], Callable[[], object], Callable[[], None]]:
    """(the events one chunk completes, the end-of-stream check, the check for invalid bytes
    seen in the last chunk, to call once its events are out): shared by both iterators."""
    lines = LineDecoder(max_line_bytes)
    decode_lines = lines.decode
    decode_event = EventDecoder().decode

    def events_of(chunk: bytes) -> List[ServerSentEvent]:
        return [event for event in map(decode_event, decode_lines(chunk)) if event is not None]

    return events_of, lines.flush, lines.raise_pending


async def aiter_events(
    chunks: AsyncIterable[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> AsyncIterator[ServerSentEvent]:
    """Decode server-sent events from an async iterable of byte chunks split anywhere.

    Raises :class:`~opchat_magic.errors.SSEDecodeError` on invalid UTF-8 (after
    yielding the events completed before the bad bytes) or a line over
    ``max_line_bytes``. An incomplete event at end of stream is discarded.
    """
    events_of, end, check = _chain(max_line_bytes)
    async for chunk in chunks:
        for event in events_of(chunk):
            yield event
        check()  # invalid UTF-8 in this chunk: raised after the events before it
    end()


def iter_events(chunks: Iterable[bytes], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[ServerSentEvent]:
    """Synchronous twin of :func:`aiter_events`, for tests and tools."""
    events_of, end, check = _chain(max_line_bytes)
    for chunk in chunks:
        yield from events_of(chunk)
        check()
    end()
