"""Lines to events: the WHATWG event-stream interpretation, one line at a time."""
from __future__ import annotations

from typing import Optional

from .models import ServerSentEvent, _new_event

__all__ = ["EventDecoder"]


class EventDecoder:
    """Feeds on lines (terminators removed) and returns an event when one is dispatched.

    Follows https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation:
    a blank line dispatches the event only if at least one ``data`` field was seen
    (a block with only ``event``/``id``/``retry`` fields dispatches nothing, though
    ``id`` and ``retry`` still take effect for the connection).
    """

    __slots__ = ("_data", "_event", "_retry", "last_event_id", "retry")

    def __init__(self) -> None:
        self._data: list = []
        self._event = ""
        self._retry: Optional[int] = None
        # Connection-level state, which outlives the event that set it.
        self.last_event_id: Optional[str] = None
        self.retry: Optional[int] = None

    def decode(self, line: str) -> Optional[ServerSentEvent]:
        if not line:
            # Dispatch, inlined: a blank line is every other line of a chat stream.
            data = self._data
            if not data:
                # No data field: nothing is dispatched; the block's event type goes with it.
                self._event = ""
                self._retry = None
                return None
            event = _new_event(self._event or "message", "\n".join(data), self.last_event_id, self._retry)
            self._data = []
            self._event = ""
            self._retry = None
            return event
        # Nearly every other line is "data: {...}": skip the field parse.
        if line[:6] == "data: ":
            self._data.append(line[6:])
            return None
        if line[0] == ":":
            return None

        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            # The spec ignores ids with NUL, which could not round-trip in a header.
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry":
            # ASCII digits only: str.isdigit() alone accepts "²" or "٣".
            if value.isascii() and value.isdigit():
                self._retry = self.retry = int(value)
        return None
