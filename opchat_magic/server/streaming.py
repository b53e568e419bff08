"""Writing one chat turn: the normal answer, and the tools faults reuse.

A :class:`Turn` is everything the request asked for, already decided (reply
chunks, delay, wire dialect). An :class:`EventStream` writes it and notices a
client that goes away: in aiohttp 3.14 a write to a closed transport raises
``ClientConnectionResetError`` (a ``ConnectionResetError``), and since the app
runs with ``handler_cancellation=True`` a client that closes while we sleep
cancels the handler with ``CancelledError``. Both are recorded as disconnects,
with the time they were seen; closes we cause on purpose (faults) are not.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web

from .replies import Directives, usage
from .state import ServerConfig, ServerState
from .wire import dumps

__all__ = ["Turn", "EventStream", "answer", "BATCH_BYTES", "SSE_HEADERS"]

# With no delay, events are joined into writes of about this size: one
# `await resp.write()` per event costs more than the event (20,000-event benchmarks).
BATCH_BYTES = 64 * 1024

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # what AI Engine sends so nginx does not buffer
}


@dataclass
class Turn:
    """One chat request, decided: what to stream, how fast, in which dialect."""

    endpoint: str
    wire: Any  # AIEngineWire | OpenAIWire
    chunks: "list[str]"
    delay: float
    prompt_tokens: int
    stream: bool
    config: ServerConfig
    directives: Directives = field(default_factory=Directives)

    @property
    def reply(self) -> str:
        return "".join(self.chunks)

    @property
    def usage(self) -> dict:
        return usage(self.prompt_tokens, self.reply)


class EventStream:
    """The response of one turn, with disconnect bookkeeping."""

    def __init__(self, request: web.Request, turn: Turn, state: ServerState):
        self.request = request
        self.turn = turn
        self.state = state
        self.resp: Optional[web.StreamResponse] = None
        self.chunks_sent = 0
        self._counted = False  # counted in stats.active
        self.done = False  # the answer is complete, or we closed it on purpose
        # A fault may rewrite every byte on its way out (cr_only).
        self.transform: Optional[Callable[[bytes], bytes]] = None

    # -- lifecycle ---------------------------------------------------------

    async def run(self, body: Callable[["EventStream"], Awaitable[Optional[web.StreamResponse]]]) -> web.StreamResponse:
        """Run ``body(self)``; record a client that left early; always return a response."""
        try:
            result = await body(self)
            if result is not None:
                return result
        except ConnectionResetError:
            self._client_left("write")
        except asyncio.CancelledError:
            self._client_left("cancelled")
            raise
        finally:
            if self._counted:
                self.state.stats.stream_ended()
        # After a lost connection aiohttp's own write_eof fails quietly (ConnectionError).
        return self.resp if self.resp is not None else web.Response(status=204)

    def _client_left(self, how: str) -> None:
        if not self.done and not self.state.stopping:
            self.state.stats.disconnect(self.turn.endpoint, self.chunks_sent, how)

    async def open(self) -> None:
        """Send the 200 status line and the SSE headers."""
        self.resp = web.StreamResponse(headers=SSE_HEADERS)
        await self.resp.prepare(self.request)  # sends the headers now
        self.state.stats.stream_started()
        self._counted = True

    # -- writing -------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        assert self.resp is not None, "open() first"
        if self.transform is not None:
            data = self.transform(data)
        await self.resp.write(data)

    async def send_live(self, chunks: "list[str]") -> None:
        """Live events for ``chunks``: the turn's delay apart, or batched when it is 0."""
        delay = self.turn.delay
        live = self.turn.wire.live
        if delay <= 0:
            batch, size = [], 0
            for chunk in chunks:
                event = live(chunk)
                batch.append(event)
                size += len(event)
                if size >= BATCH_BYTES:
                    await self._write_batch(batch)
                    batch, size = [], 0
            if batch:
                await self._write_batch(batch)
            return
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(delay)
            await self.write(live(chunk))
            self.chunks_sent += 1

    async def _write_batch(self, events: "list[bytes]") -> None:
        await self.write(b"".join(events))
        self.chunks_sent += len(events)

    async def finish(self) -> None:
        """The final event(s) for the whole turn, then a clean end of the body."""
        await self.write(self.turn.wire.finish(self.turn.reply, self.turn.usage))
        await self.complete()

    async def complete(self) -> None:
        """Count the stream as completed, then end the body cleanly.

        Counted first: once ``write_eof`` has sent the body's end, a client may
        read it and look at the stats before this coroutine runs again, so a
        count made after it raced every test that checks ``completed`` right
        after reading a reply.
        """
        assert self.resp is not None
        self.done = True
        self.state.stats.completed()
        await self.resp.write_eof()

    async def end_early(self) -> None:
        """End the body cleanly although the protocol's end never came (a fault)."""
        assert self.resp is not None
        self.done = True
        await self.resp.write_eof()

    # -- closing on purpose --------------------------------------------------

    def drop(self) -> None:
        """Close the connection now: the body is cut off (no chunked terminator)."""
        self.done = True
        transport = self.request.transport
        if transport is not None:
            transport.close()

    async def reset(self) -> None:
        """Abort the connection with a TCP RST once what was written has left."""
        self.done = True
        transport = self.request.transport
        if transport is None:
            return
        for _ in range(100):  # let the half-written line reach the socket first (<= 1 s)
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.01)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # linger 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()


async def answer(request: web.Request, turn: Turn, stream: EventStream) -> web.StreamResponse:
    """The correct answer: a JSON body, or live events then the final event(s)."""
    if not turn.stream:
        stream.done = True
        return web.json_response(turn.wire.answer(turn.reply, turn.usage), dumps=dumps)
    await stream.open()
    await stream.send_live(turn.chunks)
    await stream.finish()
    return stream.resp

