"""What the server saw, for tests to assert on.

Handlers run on the server's loop thread while tests read from theirs, so every
change and every snapshot goes through one lock, and a snapshot is a deep
enough copy that the caller can keep it.

Times: ``at`` is ``time.monotonic()`` (compare with your own monotonic clock
in the same process, e.g. interrupt-to-disconnect latency), ``wall`` is
``time.time()`` (for a server in another process).
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

__all__ = ["Stats", "StatsRecorder", "SECRET_HEADERS", "mask_headers"]

# Masked in /_opchat/stats (an HTTP endpoint anyone on the host can read);
# kept verbatim in-process, where tests assert the header shape.
SECRET_HEADERS = ("authorization", "x-wp-nonce", "cookie", "x-api-key", "api-key")


def mask_headers(headers: dict) -> dict:
    out = {}
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS:
            scheme, _, rest = value.partition(" ")
            value = f"{scheme} ***" if rest and name.lower() == "authorization" else "***"
        out[name] = value
    return out


@dataclass(frozen=True)
class Stats:
    """A snapshot of the server's counters.

    requests:          endpoint -> count; endpoints are ``submit``, ``start_session``,
                       ``chat_completions``, ``models``
    statuses:          HTTP status -> count, over those endpoints
    streams_started:   streamed responses whose headers went out
    completed:         streams that sent their final event (``end`` / ``[DONE]``)
    disconnects:       chat requests whose client went away before the answer was
                       complete (mostly streams; also a request waiting on a
                       slow_first_byte / no_headers fault)
    disconnect_events: per disconnect ``{endpoint, at, wall, chunks_sent, how}``;
                       ``how`` is ``"write"`` (a write failed, or the socket
                       was seen closed while waiting) or ``"cancelled"``
                       (aiohttp cancelled the handler when the socket closed);
                       the last 1,000 are kept
    active:            streams running right now
    faults:            fault name -> times injected
    recent:            the last requests, oldest first, each
                       ``{endpoint, method, path, headers, body, at, wall}``
                       (``body`` is the parsed JSON, or None)
    """

    requests: dict = field(default_factory=dict)
    statuses: dict = field(default_factory=dict)
    streams_started: int = 0
    completed: int = 0
    disconnects: int = 0
    disconnect_events: list = field(default_factory=list)
    active: int = 0
    faults: dict = field(default_factory=dict)
    recent: list = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:  # stats["disconnects"] reads like the JSON form
        return getattr(self, name)

    @property
    def bodies(self) -> list:
        return [r["body"] for r in self.recent]

    @property
    def headers(self) -> list:
        return [r["headers"] for r in self.recent]

    @property
    def last_body(self) -> Any:
        return self.recent[-1]["body"] if self.recent else None

    @property
    def last_headers(self) -> Optional[dict]:
        return self.recent[-1]["headers"] if self.recent else None

    @property
    def last_disconnect_at(self) -> Optional[float]:
        return self.disconnect_events[-1]["at"] if self.disconnect_events else None

    def to_json(self, mask: bool = True) -> dict:
        recent = [dict(r, headers=mask_headers(r["headers"]) if mask else r["headers"]) for r in self.recent]
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "streams_started": self.streams_started,
            "completed": self.completed,
            "disconnects": self.disconnects,
            "disconnect_events": self.disconnect_events,
            "active": self.active,
            "faults": self.faults,
            "recent": recent,
        }


class StatsRecorder:
    def __init__(self, history: int = 50):
        self._lock = threading.Lock()
        self._history = history
        # `active` is live state, not history: reset() leaves it alone, so a
        # reset during a stream cannot drive it negative.
        self._active = 0
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests: Counter = Counter()
            self._statuses: Counter = Counter()
            self._faults: Counter = Counter()
            self._streams_started = 0
            self._completed = 0
            self._disconnects: deque = deque(maxlen=1000)
            self._disconnect_count = 0
            self._recent: deque = deque(maxlen=self._history)

    def request(self, endpoint: str, method: str, path: str, headers: Mapping[str, str], body: Any) -> None:
        entry = {
            "endpoint": endpoint,
            "method": method,
            "path": path,
            "headers": dict(headers),
            "body": body,
            "at": time.monotonic(),
            "wall": time.time(),
        }
        with self._lock:
            self._requests[endpoint] += 1
            self._recent.append(entry)

    def status(self, code: int) -> None:
        with self._lock:
            self._statuses[code] += 1

    def fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] += 1

    def stream_started(self) -> None:
        with self._lock:
            self._streams_started += 1
            self._active += 1

    def stream_ended(self) -> None:
        with self._lock:
            self._active = max(0, self._active - 1)

    def completed(self) -> None:
        with self._lock:
            self._completed += 1

    def disconnect(self, endpoint: str, chunks_sent: int, how: str) -> None:
        event = {"endpoint": endpoint, "at": time.monotonic(), "wall": time.time(), "chunks_sent": chunks_sent, "how": how}
        with self._lock:
            self._disconnects.append(event)
            self._disconnect_count += 1

    def snapshot(self) -> Stats:
        with self._lock:
            return Stats(
                requests=dict(self._requests),
                statuses=dict(self._statuses),
                streams_started=self._streams_started,
                completed=self._completed,
                disconnects=self._disconnect_count,
                disconnect_events=[dict(e) for e in self._disconnects],
                active=self._active,
                faults=dict(self._faults),
                # Entries are copied, bodies shared: copying 50 large bodies on
                # every poll would make polling tests slow. Treat them as read-only.
                recent=[dict(r, headers=dict(r["headers"])) for r in self._recent],
            )
