"""Stream throughput: the Opchatgpts provider against a plain aiohttp loop.

    python benchmarks/stream_throughput.py [--small N] [--large N] [--large-size BYTES]
                                           [--huge-size BYTES] [--repeat R]

Starts a ``LocalServer(delay=0)`` in-process (its own thread) and times, in one
run, on the same streams:

(a) plain:    ``session.post(...)``, ``async for line in response.content:``,
              ``json.loads`` of each ``data:`` line, live text collected in a list;
(b) provider: ``Opchatgpts.create_async_generator(...)`` consumed with ``async for``
              (SSE decoding, the protocol checks, ``reply.chunks`` bookkeeping).

Cases: N small events (5 characters each), N large events (32 KiB each: the
plain loop cannot read lines over 64 KiB), and one 1 MiB event (the plain loop
fails on it, and the error is reported; the provider completes).

Timing runs from the first text chunk to the end of the stream, so the server's
work before the headers (composing a multi-megabyte reply) is not counted for
either side; for the one-event huge-line case, from the request to the end. Measurements are interleaved (a, b, a, b, ...) ``--repeat`` times
and the median is reported. Both sides share one ClientSession. The server
shares the process (and the GIL) with the client, as the two sides do equally.
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

from opchat_magic.providers.opchatgpts import SUBMIT_PATH, Opchatgpts  # noqa: E402
from opchat_magic.server import LocalServer  # noqa: E402

perf = time.perf_counter


def messages_for(events: int, size: int) -> list:
    return [{"role": "user", "content": f"bench [[chunks:{events}]] [[chunk:{size}]] [[delay:0]]"}]


async def plain(session: aiohttp.ClientSession, base: str, messages: list,
                read_bufsize=None, total=False) -> "tuple[int, float]":
    """(a): the loop a user would write first. Returns (live events, seconds first chunk -> end).

    ``read_bufsize`` raises aiohttp's line limit (2 x read_bufsize: 512 KiB by default).
    """
    payload = Opchatgpts.build_payload(messages)
    headers = Opchatgpts.build_headers(base)
    chunks = []
    t0 = perf() if total else None
    loads = json.loads
    extra = {"read_bufsize": read_bufsize} if read_bufsize else {}
    async with session.post(base + SUBMIT_PATH, json=payload, headers=headers, **extra) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: "):
                obj = loads(line[6:])
                kind = obj["type"]
                if kind == "live":
                    if t0 is None:
                        t0 = perf()
                    chunks.append(obj["data"])
                elif kind == "end":
                    break
    return len(chunks), perf() - t0


async def provider(session: aiohttp.ClientSession, base: str, messages: list,
                   total=False, **_) -> "tuple[int, float]":
    """(b): the provider. Returns (chunks yielded, seconds first chunk -> end)."""
    t0 = perf() if total else None
    stream = Opchatgpts.create_async_generator("", messages, url=base, session=session)
    async for _ in stream:
        if t0 is None:
            t0 = perf()
    elapsed = perf() - t0
    assert stream.reply.complete, "the provider's stream did not complete"
    return len(stream.reply.chunks), elapsed


async def measure(fn, session, base, messages, repeat: int, **kw):
    times, events, error = [], None, None
    for _ in range(repeat):
        try:
            events, elapsed = await fn(session, base, messages, **kw)
        except Exception as exc:  # the plain loop on the 1 MiB line
            error = " ".join(f"{type(exc).__name__}: {exc}".split())
            break
        times.append(elapsed)
    return events, times, error


async def run(args) -> None:
    cases = [
        ("small", args.small, 5),
        ("large", args.large, args.large_size),
        ("huge line", 1, args.huge_size),
    ]
    async with aiohttp.ClientSession() as session:
        with LocalServer(delay=0) as server:
            base = server.url
            # Warm up both paths (imports, the server's text cache, connection).
            await plain(session, base, messages_for(100, 5))
            await provider(session, base, messages_for(100, 5))

            rows, plain_errors = [], []
            for name, events, size in cases:
                messages = messages_for(events, size)
                a_times, b_times, a_err, b_err, n = [], [], None, None, events
                # Every reply ends with an `end` line holding the whole reply: past
                # aiohttp's line limit the plain loop fails. Record that error, then
                # (except for the huge-line case, which exists to show it) raise
                # the limit for the plain loop so that there is something to compare.
                bufsize = None
                if events * size * 2 > 400_000:
                    _, _, a_err = await measure(plain, session, base, messages, 1)
                    if name != "huge line":
                        plain_errors.append((name, a_err))
                        a_err, bufsize = None, 1 << 24
                for _ in range(args.repeat):  # interleaved: a, b, a, b, ...
                    if a_err is None:
                        na, ta, a_err = await measure(plain, session, base, messages, 1,
                                                      read_bufsize=bufsize, total=name == "huge line")
                        a_times += ta
                    nb, tb, b_err = await measure(provider, session, base, messages, 1, total=name == "huge line")
                    b_times += tb
                    if nb is not None:
                        n = nb
                rows.append((name, n, size, a_times, b_times, a_err, b_err))

    print(f"\nOpchatgpts stream throughput (median of {args.repeat}, first chunk -> end; "
          f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, {os.cpu_count()} CPUs)\n")
    head = (f"{'case':<10} {'events':>7} {'bytes/ev':>9} {'plain ev/s':>12} {'provider ev/s':>14} {'ratio b/a':>9}"
            f" {'plain ms':>9} {'provider ms':>12}")
    print(head)
    print("-" * len(head))
    for name, n, size, a_times, b_times, a_err, b_err in rows:
        a_ms = statistics.median(a_times) * 1000 if a_times else None
        b_ms = statistics.median(b_times) * 1000 if b_times else None
        a = n / a_ms * 1000 if a_ms else None
        b = n / b_ms * 1000 if b_ms else None
        a_txt = f"{a:12,.0f}" if a else f"{'failed':>12}"
        b_txt = f"{b:14,.0f}" if b else f"{'failed':>14}"
        ratio = f"{b / a:9.3f}" if a and b else f"{'-':>9}"
        a_ms_txt = f"{a_ms:9.1f}" if a_ms else f"{'-':>9}"
        b_ms_txt = f"{b_ms:12.1f}" if b_ms else f"{'-':>12}"
        print(f"{name:<10} {n:>7} {size:>9} {a_txt} {b_txt} {ratio} {a_ms_txt} {b_ms_txt}")
        if a_err:
            print(f"  plain loop error: {a_err[:160]}")
        if b_err:
            print(f"  provider error:   {b_err[:160]}")
    for name, err in plain_errors:
        print(f"  {name}: with aiohttp's default read_bufsize the plain loop failed ({err[:100]}...);"
              f" measured with read_bufsize=16 MiB")
    print()
    for name, n, size, a_times, b_times, *_ in rows:
        spread = lambda ts: ", ".join(f"{t * 1000:.1f}" for t in ts)  # noqa: E731
        print(f"  {name}: plain ms [{spread(a_times)}]  provider ms [{spread(b_times)}]")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=20_000, help="small events (5 chars) in the first case")
    parser.add_argument("--large", type=int, default=200, help="large events in the second case")
    parser.add_argument("--large-size", type=int, default=32 * 1024, help="characters per large event")
    parser.add_argument("--huge-size", type=int, default=1 << 20, help="characters of the one huge event")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (median reported)")
    parser.add_argument("--no-openai", action="store_true", help="skip the OpenAICompatible table")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    if not args.no_openai:
        # The same comparison for the OpenAI-compatible provider (its own module, run here too).
        import stream_throughput_openai

        stream_throughput_openai.main(["--events", str(args.small), "--repeat", str(args.repeat)])


if __name__ == "__main__":
    main()
