"""The provider interface and what a reply is.

Providers are async generators of text, as in gpt4free: ``async for text in
Provider.create_async_generator(model, messages)``. What arrives at the end of a
stream (the whole reply, token usage) is kept on ``stream.reply``, so callers that
want it read it after the loop without changing the plain ``async for`` use.

Reasoning ("thinking") text is a :class:`Reasoning` chunk, a ``str`` subclass.
Providers always produce it; the stream hands it to the caller only when asked
with ``reasoning=True`` (the turn driver does, to show it apart). By default the
stream yields answer text only, as the original provider did, and the
reasoning is kept on ``reply.reasoning`` either way. Reasoning is never part of
``reply.text``, so it never enters the history sent with the next request.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Optional

Messages = list  # list[dict[str, str]]: [{"role": "user", "content": "..."}]


class Reasoning(str):
    """A chunk of the model's reasoning ("thinking"), not of its answer.

    OpenAI-compatible servers send it as ``delta.reasoning_content`` /
    ``delta.reasoning``; AI Engine as ``live`` events with subtype ``thinking``.
    """

    __slots__ = ()


@dataclass
class Usage:
    """Token counts, as the server reported them (None where it did not)."""

    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    total_tokens: Optional[int] = None
    # Of completion_tokens, how many were reasoning (OpenAI's
    # usage.completion_tokens_details.reasoning_tokens; some servers put it at the top level).
    reasoning_tokens: Optional[int] = None
    # AI Engine's own figures (its end payload's usage): the cost it computed (often null),
    # how many model queries the turn took, and whether the counts are "estimated" or exact.
    price: Optional[float] = None
    queries: Optional[int] = None
    accuracy: Optional[str] = None

    @classmethod
    def from_dict(cls, data: Any) -> Optional["Usage"]:
        if not isinstance(data, dict):
            return None

        def num(key):
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        usage = cls(num("prompt_tokens"), num("completion_tokens"), num("total_tokens"))
        details = data.get("completion_tokens_details")
        reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else data.get("reasoning_tokens")
        if isinstance(reasoning, int) and not isinstance(reasoning, bool):
            usage.reasoning_tokens = reasoning
        price = data.get("price")
        if isinstance(price, (int, float)) and not isinstance(price, bool):
            usage.price = price
        usage.queries = num("queries")
        if isinstance(data.get("accuracy"), str):
            usage.accuracy = data["accuracy"]
        if usage.total_tokens is None and None not in (usage.prompt_tokens, usage.completion_tokens):
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return usage


@dataclass
class Reply:
    """One assistant reply as it streams: its chunks, and on ``end`` the final facts.

    Times are ``time.perf_counter()`` readings; ``None`` until they happen.
    ``model`` starts as the model asked for and becomes the one the server says
    it used (the chunks' ``model`` field) once it says so; ``requested_model``
    keeps the first. ``endpoint`` is the URL the request went to, with any
    credentials taken out (safe to show).
    """

    provider: str = ""
    model: str = ""
    chunks: list = field(default_factory=list)
    complete: bool = False
    usage: Optional[Usage] = None
    final: Optional[dict] = None  # the parsed end payload (or the non-streamed JSON answer)
    started_at: float = field(default_factory=time.perf_counter)
    first_chunk_at: Optional[float] = None  # the first chunk of either kind: when the user first sees something
    finished_at: Optional[float] = None
    reasoning_chunks: list = field(default_factory=list)
    endpoint: str = ""
    requested_model: str = ""
    finish_reason: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.requested_model:
            self.requested_model = self.model

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def reasoning(self) -> str:
        """All reasoning text received (never part of :attr:`text`)."""
        return "".join(self.reasoning_chunks)

    @property
    def usage_reported(self) -> bool:
        """Whether the server reported token counts (llama-cpp-python ignores ``stream_options``)."""
        usage = self.usage
        return usage is not None and (usage.prompt_tokens is not None or usage.completion_tokens is not None)

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
    HTTP connection. :class:`Reasoning` chunks go to ``reply.reasoning_chunks``
    and are handed on only when ``reasoning`` is true.
    """

    def __init__(self, agen: AsyncIterator[str], reply: Reply, reasoning: bool = False):
        self._agen = agen
        self.reply = reply
        self.reasoning = bool(reasoning)

    def __aiter__(self) -> "ReplyStream":
        return self

    async def __anext__(self) -> str:
        reply = self.reply
        while True:
            try:
                text = await self._agen.__anext__()
            except StopAsyncIteration:
                if reply.finished_at is None:
                    reply.finished_at = time.perf_counter()
                raise
            except BaseException:
                reply.finished_at = time.perf_counter()
                raise
            if reply.first_chunk_at is None:
                reply.first_chunk_at = time.perf_counter()
            if text.__class__ is Reasoning:
                reply.reasoning_chunks.append(text)
                if not self.reasoning:
                    continue
                return text
            reply.chunks.append(text)
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
    # The longest wait for a stream's first event, in seconds; None: as read_timeout.
    # A plain provider kwarg (first_event_timeout=) with this class-level default.
    first_event_timeout: "float | None" = None

    @classmethod
    def create_async_generator(
        cls, model: str, messages: Messages, proxy: Optional[str] = None, **kwargs: Any
    ) -> ReplyStream:
        reasoning = kwargs.pop("reasoning", False)
        reply = Reply(provider=cls.__name__, model=model or cls.default_model)
        return ReplyStream(cls._stream(model, messages, proxy, reply, **kwargs), reply, reasoning=reasoning)

    @classmethod
    async def list_models(cls, proxy: Optional[str] = None, **kwargs: Any) -> "list[str]":
        """The model ids the provider's server offers.

        Raises :class:`~opchat_magic.errors.ModelListingUnsupportedError` where the
        protocol has no listing (the default).
        """
        from ..errors import ModelListingUnsupportedError

        raise ModelListingUnsupportedError(
            f"{cls.__name__} has no model listing: its protocol does not say which models a server offers."
        )

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
