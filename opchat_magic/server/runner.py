"""``LocalServer``: start and stop the app from tests, notebooks and the CLI.

Two ways to run it:

* ``server.start()`` / ``stop()`` / ``with LocalServer() as server:`` run it
  on a daemon thread with its own event loop. Works from sync code, from a
  notebook, and from async tests (the client's loop stays free).
* ``await server.astart()`` / ``astop()`` / ``async with LocalServer():`` run
  it on the current loop (the CLI does this).

Stopping cancels open streams first, so a test that leaves a 60 s
``keepalive_only`` stream behind still stops in well under a second.
"""
from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from typing import Callable, Iterable, Optional

from aiohttp import web

from .app import build_app, cancel_open_requests
from .faults import check_fault_name
from .state import ServerConfig, ServerState
from .stats import Stats

__all__ = ["LocalServer", "is_loopback"]

_POLL_INTERVAL = 0.01  # seconds between looks in wait_for / await_for


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LocalServer:
    """A local AI Engine + OpenAI-compatible chat server with deterministic replies.

    >>> with LocalServer(delay=0) as server:          # doctest: +SKIP
    ...     server.url, server.openai_base_url
    ('http://127.0.0.1:40123', 'http://127.0.0.1:40123/v1')

    Arguments (all but host and port keyword-only):
      host, port         where to listen; port 0 picks a free port
      delay              seconds between streamed chunks (0: no pause, batched writes)
      chunk_size         characters per streamed chunk
      bot_ids            AI Engine chatbots; an unknown botId is answered by ``default`` (as the
                         plugin does) when there is one, else rejected
      require_nonce      AI Engine submit needs ``X-WP-Nonce`` from start_session (as AI Engine 3.x)
      input_limit        AI Engine: longest newMessage in characters (the chatbot's
                         textInputMaxLength, 512 by default; 0: no limit)
      plain_permalinks   AI Engine: answer like a site without pretty permalinks (``/wp-json/``
                         is the home page; ``/?rest_route=/...`` is the REST API)
      api_key            OpenAI endpoints need ``Authorization: Bearer <api_key>``
      max_body           request body limit in bytes (larger -> 413)
      fault              a fault name applied to every chat request until cleared
      fault_delay        seconds for ``stall`` / ``slow_first_byte``
      huge_size          characters in the ``huge_line`` event
      trickle_interval   seconds between bytes for ``trickle``
      keepalive_interval seconds between comments for ``keepalive_only``
      max_hang           bound in seconds for ``no_headers`` / ``keepalive_only``
      model              the model name ``/v1/models`` lists (first)
      extra_models       more model ids ``/v1/models`` lists
      strict_models      refuse chat requests for unlisted models (OpenAI's 404); by
                         default any name is accepted and echoed, as local servers do
      history            how many recent requests ``stats.recent`` keeps
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay: float = 0.02,
        chunk_size: int = 5,
        bot_ids: Iterable[str] = ("default",),
        require_nonce: bool = False,
        input_limit: int = 512,
        plain_permalinks: bool = False,
        api_key: Optional[str] = None,
        max_body: int = 1 << 20,
        fault: Optional[str] = None,
        fault_delay: float = 3.0,
        huge_size: int = 1 << 20,
        trickle_interval: float = 0.1,
        keepalive_interval: float = 0.5,
        max_hang: float = 60.0,
        model: str = "opchat-local",
        history: int = 50,
        extra_models: Iterable[str] = (),
        strict_models: bool = False,
    ):
        check_fault_name(fault)
        if isinstance(bot_ids, str):  # LocalServer(bot_ids="mybot") means one bot, not its letters
            bot_ids = (bot_ids,)
        self.host = host
        self._requested_port = port
        self.config = ServerConfig(
            delay=delay,
            chunk_size=chunk_size,
            bot_ids=frozenset(bot_ids),
            require_nonce=require_nonce,
            input_limit=input_limit,
            plain_permalinks=plain_permalinks,
            api_key=api_key,
            max_body=max_body,
            fault_delay=fault_delay,
            huge_size=huge_size,
            trickle_interval=trickle_interval,
            keepalive_interval=keepalive_interval,
            max_hang=max_hang,
            model=model,
            history=history,
            extra_models=extra_models,
            strict_models=strict_models,
        )
        self._state = ServerState(self.config, fault)
        self._runner: Optional[web.AppRunner] = None
        self._port: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:  # never shows the api key
        where = self.url if self.running else "not running"
        return f"<LocalServer {where} delay={self.config.delay} chunk_size={self.config.chunk_size}>"

    # -- addresses -----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running; call start() or astart() first")
        return self._port

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"  # listening everywhere; loopback is one of them
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def submit_url(self) -> str:
        return self.url + "/wp-json/mwai-ui/v1/chats/submit"

    # -- running on the current loop -----------------------------------------

    async def astart(self) -> "LocalServer":
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        app = build_app(self._state)
        # handler_cancellation: a client that closes mid-stream cancels the
        # handler at once (recorded as a disconnect) even while it sleeps.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = runner.addresses[0][1]
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        return self

    async def astop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._state.stopping = True
        try:
            await cancel_open_requests(runner.app)
            await runner.cleanup()
        finally:
            self._state.stopping = False
            self._loop = None

    async def __aenter__(self) -> "LocalServer":
        return await self.astart()

    async def __aexit__(self, *exc) -> None:
        await self.astop()

    # -- running on a thread of its own --------------------------------------

    def start(self, timeout: float = 10.0) -> "LocalServer":
        """Run on a daemon thread; returns once the port is listening."""
        if self._runner is not None or self._thread is not None:
            raise RuntimeError("the server is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
            except BaseException as exc:  # e.g. the port is taken: re-raised in start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name=f"opchat-server-{self.host}", daemon=True)
        self._thread = thread
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if failure:
            self._thread = None
            thread.join(timeout)
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with start() (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None:
            if self._runner is not None:
                raise RuntimeError("this server runs on your event loop: use `await server.astop()`")
            return
        if threading.current_thread() is thread:
            raise RuntimeError("stop() called from the server's own thread")
        if loop is not None and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self.astop(), loop).result(timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults, nonces, stats -------------------------------------------------

    def set_fault(self, name: str, count: Optional[int] = 1, **options) -> None:
        """Inject ``name`` into the next ``count`` chat requests it applies to (None: until cleared).

        ``options`` retune the server's fault knobs: fault_delay, huge_size,
        trickle_interval, keepalive_interval, max_hang.
        """
        check_fault_name(name)
        self.config.tune(**options)
        self._state.fault.set(name, count)

    def clear_fault(self) -> None:
        self._state.fault.clear()

    @property
    def fault(self) -> "tuple[Optional[str], Optional[int]]":
        """(name, requests left) of the server-wide fault; (None, None) when clear."""
        return self._state.fault.peek()

    def expire_nonces(self) -> None:
        """Make every issued nonce stale (submit then answers rest_cookie_invalid_nonce)."""
        self._state.nonces.expire()

    def age_nonces(self) -> None:
        """Make issued nonces old (still valid; the next end payload carries a ``new_token``)."""
        self._state.nonces.age()

    def issue_nonce(self) -> str:
        """A valid nonce without a start_session round trip."""
        return self._state.nonces.issue()

    @property
    def stats(self) -> Stats:
        """A snapshot (safe to keep; request bodies inside are shared, treat as read-only)."""
        return self._state.stats.snapshot()

    def reset_stats(self) -> None:
        self._state.stats.reset()

    def wait_for(self, predicate: Callable[[Stats], bool], timeout: float = 5.0) -> Stats:
        """Poll ``stats`` until ``predicate(stats)``; TimeoutError after ``timeout`` s."""
        if self._thread is None and self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("this would block the server's own loop: use `await server.await_for(...)`")
        deadline = time.monotonic() + timeout
        while (stats := self._poll(predicate, deadline, timeout)) is None:
            time.sleep(_POLL_INTERVAL)
        return stats

    async def await_for(self, predicate: Callable[[Stats], bool], timeout: float = 5.0) -> Stats:
        """``wait_for`` for async code."""
        deadline = time.monotonic() + timeout
        while (stats := self._poll(predicate, deadline, timeout)) is None:
            await asyncio.sleep(_POLL_INTERVAL)
        return stats

    def _poll(self, predicate: Callable[[Stats], bool], deadline: float, timeout: float) -> Optional[Stats]:
        """One look for wait_for/await_for: the stats if ``predicate`` holds, None to
        poll again, TimeoutError once ``deadline`` (monotonic) has passed."""
        stats = self.stats
        if predicate(stats):
            return stats
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout} s; stats: {stats}")
        return None


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
