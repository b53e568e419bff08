"""What the decoder yields: one dispatched server-sent event."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ServerSentEvent"]


@dataclass(frozen=True)
class ServerSentEvent:
    """A dispatched event, as the WHATWG event-stream interpretation defines it.

    ``id`` is the stream's *last event ID* at dispatch time, so it carries over to
    later events that have no ``id`` field (that is what a reconnecting client
    sends back as ``Last-Event-ID``). ``retry`` is set only on the event whose
    block contained a valid ``retry`` field.
    """

    event: str = "message"
    data: str = ""
    id: Optional[str] = None
    retry: Optional[int] = None


_object_new = object.__new__


def _new_event(event: str, data: str, id: Optional[str], retry: Optional[int]) -> ServerSentEvent:
    # The decoder's constructor. A frozen dataclass's __init__ assigns each field
    # through object.__setattr__, which costs about as much as decoding the line
    # itself; filling the instance dict directly builds an identical (equal,
    # same-hash) instance in half the time. Valid while the class has no __slots__.
    ev = _object_new(ServerSentEvent)
    d = ev.__dict__
    d["event"] = event
    d["data"] = data
    d["id"] = id
    d["retry"] = retry
    return ev
