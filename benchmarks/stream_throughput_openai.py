"""Stream throughput: the OpenAICompatible provider against a plain aiohttp loop.

    python benchmarks/stream_throughput_openai.py [--events N] [--size CHARS] [--repeat R]

Starts a ``LocalServer(delay=0)`` in-process (its own thread) and times, on the
same ``/v1/chat/completions`` stream (N small events, ``--size`` characters each):

(a) plain:    ``session.post(...)``, ``async for line in response.content:``,
              ``json.loads`` of each ``data:`` line, ``choices[0].delta.content``
              collected in a list, stop at ``data: [DONE]``;
(b) provider: ``OpenAICompatible.create_async_generator(...)`` consumed with
              ``async for`` (SSE decoding per the spec, error/usage/finish_reason
              handling, ``reply.chunks`` bookkeeping, idle timeout).

Timing runs from the first text chunk to the end of the stream, so the server's
work before the headers is not counted for either side. Measurements are
interleaved (a, b, a, b, ...) ``--repeat`` times and the median is reported.
Both sides share one ClientSession. The server shares the process (and the
GIL) with the client, as the two sides do equally. Target: ratio b/a >= 0.95.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aiohttp  # noqa: E402

from opchat_magic.providers.openai_compat import OpenAICompatible  # noqa: E402
from opchat_magic.server import LocalServer  # noqa: E402

perf = time.perf_counter


def messages_for(events: int, size: int) -> list:
    return [{"role": "user", "content": f"bench [[chunks:{events}]] [[chunk:{size}]] [[delay:0]]"}]


async def plain(session: aiohttp.ClientSession, base: str, messages: list) -> "tuple[int, float]":
    """(a): the loop a user would write first. Returns (text chunks, seconds first chunk -> end)."""
    headers, payload = OpenAICompatible.build_request("bench", messages)
    chunks = []
    t0 = None
    loads = json.loads
    async with session.post(base + "/chat/completions", json=payload, headers=headers) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: "):
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                obj = loads(data)
                choices = obj.get("choices")
                if choices:
                    content = choices[0].get("delta", {}).get("content")
                    if content:
                        if t0 is None:
                            t0 = perf()
                        chunks.append(content)
    return len(chunks), perf() - t0


async def provider(session: aiohttp.ClientSession, base: str, messages: list) -> "tuple[int, float]":
    """(b): the provider. Returns (chunks yielded, seconds first chunk -> end)."""
    t0 = None
    stream = OpenAICompatible.create_async_generator("bench", messages, base_url=base, session=session)
    async for _ in stream:
        if t0 is None:
            t0 = perf()
    elapsed = perf() - t0
    assert stream.reply.complete, "the provider's stream did not complete"
    assert stream.reply.usage is not None, "no usage chunk"
    return len(stream.reply.chunks), elapsed


async def run(args) -> float:
    messages = messages_for(args.events, args.size)
    a_times, b_times = [], []
    async with aiohttp.ClientSession() as session:
        with LocalServer(delay=0) as server:
            base = server.openai_base_url
            # Warm up both paths (imports, the server's text cache, the connection).
            await plain(session, base, messages_for(200, args.size))
            await provider(session, base, messages_for(200, args.size))
            for _ in range(args.repeat):  # interleaved: a, b, a, b, ...
                na, ta = await plain(session, base, messages)
                nb, tb = await provider(session, base, messages)
                assert na == nb == args.events, (na, nb, args.events)
                a_times.append(ta)
                b_times.append(tb)

    a = args.events / statistics.median(a_times)
    b = args.events / statistics.median(b_times)
    print(f"\nOpenAICompatible stream throughput (median of {args.repeat}, first chunk -> end; "
          f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs)\n")
    head = f"{'case':<8} {'events':>7} {'chars/ev':>9} {'plain ev/s':>12} {'provider ev/s':>14} {'ratio b/a':>9}"
    print(head)
    print("-" * len(head))
    print(f"{'small':<8} {args.events:>7} {args.size:>9} {a:12,.0f} {b:14,.0f} {b / a:9.3f}")
    print(f"\nruns (s): plain {', '.join(f'{t:.3f}' for t in a_times)}")
    print(f"          provider {', '.join(f'{t:.3f}' for t in b_times)}")
    print(f"target ratio >= 0.95: {'met' if b / a >= 0.95 else 'NOT met'}")
    return b / a


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per stream (default 20,000)")
    parser.add_argument("--size", type=int, default=5, help="characters per event (default 5)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repeats (default 5)")
    args = parser.parse_args(argv)
    if args.events < 1 or args.size < 1 or args.repeat < 1:
        parser.error("--events, --size and --repeat must be >= 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
