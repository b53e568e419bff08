"""The provider interface and what a reply is.

Providers are async generators of text, as in gpt4free: ``async for text in
Provider.create_async_generator(model, messages)``. What arrives at the end of a
stream (the whole reply, token usage) is kept on ``stream.reply``, so callers that
want it read it after the loop without changing the plain ``async for`` use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Optional

Messages = list  # list[dict[str, str]]: [{"role": "user", "content": "..."}]


@dataclass
class Usage:
    """Token counts, as the server reported them (None where it did not)."""

    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    total_tokens: Optional[int] = None

    @classmethod
    def from_dict(cls, data: Any) -> Optional["Usage"]:
        if not isinstance(data, dict):
            return None

        def num(key):
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        usage = cls(num("prompt_tokens"), num("completion_tokens"), num("total_tokens"))
        if usage.total_tokens is None and None not in (usage.prompt_tokens, usage.completion_tokens):
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return usage


@dataclass
class Reply:
    """One assistant reply as it streams: its chunks, and on ``end`` the final facts.

    Times are ``time.perf_counter()`` readings; ``None`` until they happen.
    """

    provider: str = ""
    model: str = ""
    chunks: list = field(default_factory=list)
    complete: bool = False
    usage: Optional[Usage] = None
    final: Optional[dict] = None  # the parsed end payload (or the non-streamed JSON answer)
    started_at: float = field(default_factory=time.perf_counter)
    first_chunk_at: Optional[float] = None
    finished_at: Optional[float] = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def time_to_first_chunk(self) -> Optional[float]:
        return None if self.first_chunk_at is None else self.first_chunk_at - self.started_at

    @property
    def total_time(self) -> Optional[float]:
        return None if self.finished_at is None else self.finished_at - self.started_at


class ReplyStream:
    """An async iterator of text chunks that records them on ``self.reply``.

    It wraps a provider's raw async generator. Closing it (``aclose``, or
    cancelling the task that iterates it) closes the generator, and so the
    HTTP connection.
    """

    def __init__(self, agen: AsyncIterator[str], reply: Reply):
        self._agen = agen
        self.reply = reply

    def __aiter__(self) -> "ReplyStream":
        return self

    async def __anext__(self) -> str:
        try:
            text = await self._agen.__anext__()
        except StopAsyncIteration:
            if self.reply.finished_at is None:
                self.reply.finished_at = time.perf_counter()
            raise
        except BaseException:
            self.reply.finished_at = time.perf_counter()
            raise
        if self.reply.first_chunk_at is None:
            self.reply.first_chunk_at = time.perf_counter()
        self.reply.chunks.append(text)
        return text

    async def aclose(self) -> None:
        await self._agen.aclose()

    async def __aenter__(self) -> "ReplyStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class AsyncGeneratorProvider:
    """Base of every provider. Subclasses implement ``_stream``.

    ``_stream(model, messages, proxy, reply, **kwargs)`` is an async generator
    yielding reply text; on the server's end-of-stream it sets ``reply.complete``,
    ``reply.usage`` and ``reply.final`` and returns. It raises the typed errors of
    ``opchat_magic.errors`` for everything else.
    """

    url: str = ""
    working: bool = False
    supports_stream: bool = True
    supports_message_history: bool = False
    supports_gpt_35_turbo: bool = False
    supports_images: bool = False  # takes OpenAI image_url content parts (opchat_magic.images)
    default_model: str = ""

    @classmethod
    def create_async_generator(
        cls, model: str, messages: Messages, proxy: Optional[str] = None, **kwargs: Any
    ) -> ReplyStream:
        reply = Reply(provider=cls.__name__, model=model or cls.default_model)
        return ReplyStream(cls._stream(model, messages, proxy, reply, **kwargs), reply)

    @classmethod
    def _stream(cls, model, messages, proxy, reply, **kwargs) -> AsyncIterator[str]:
        raise NotImplementedError

    @classmethod
    async def create_async(
        cls, model: str, messages: Messages, proxy: Optional[str] = None, **kwargs: Any
    ) -> str:
        """The whole reply text, awaited in the caller's loop."""
        stream = cls.create_async_generator(model, messages, proxy=proxy, **kwargs)
        async with stream:
            async for _ in stream:
                pass
        return stream.reply.text

    @classmethod
    def create_completion(
        cls, model: str, messages: Messages, stream: bool = True, proxy: Optional[str] = None, **kwargs: Any
    ) -> Iterator[str]:
        """Synchronous chunks, with or without a running event loop.

        The generator runs on opchat-magic's private loop thread, so inside
        Jupyter (where a loop is already running) nothing patches the kernel's
        loop with nest_asyncio.
        """
        from ..loop import get_loop

        agen = cls.create_async_generator(model, messages, proxy=proxy, **kwargs)
        if stream:
            yield from get_loop().iterate(agen)
        else:
            yield "".join(get_loop().iterate(agen))
