"""The first reply cell after loading: opchat-magic vs chatlas, side by side in one run.

Each round starts fresh kernels (one per contender, alternating), runs the
setup cell (``%load_ext opchat_magic`` + ``%config``; for chatlas the import
and ``ChatOpenAI(...)``), waits ``--pause`` seconds as a user would before
typing, then times the first reply cell from execute request to idle. The
local server answers both (AI Engine and OpenAI endpoints, no delay between
chunks); its own time is what a warm plain aiohttp client in this process
takes for the same request. Reported: medians over the rounds, and each
contender's overhead over the server's own time.

    python benchmarks/first_cell.py [--rounds 5] [--pause 1.0]

chatlas is measured when it imports (``pip install chatlas``); else its rows
say so.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time

import aiohttp

from opchat_magic.server import LocalServer
from opchat_magic.testing.kernel import Kernel

MESSAGE = "Hello there"


def contenders(url: str):
    base = url + "/v1"
    load = ("import time as _t\n_t0 = _t.perf_counter()\nget_ipython().run_line_magic('load_ext', 'opchat_magic')\n"
            "_load = _t.perf_counter() - _t0\n")
    yield ("opchat (AI Engine)",
           load + f"%config OpchatMagics.url = {url!r}\n%config OpchatMagics.persist = False",
           f"%%opchat\n{MESSAGE}")
    yield ("opchat (openai provider)",
           load + "%config OpchatMagics.provider = 'openai'\n"
           f"%config OpchatMagics.url = {base!r}\n%config OpchatMagics.model = 'opchat-local'\n"
           "%config OpchatMagics.persist = False",
           f"%%opchat\n{MESSAGE}")
    if importlib.util.find_spec("chatlas") is not None:
        # ChatOpenAI speaks the Responses API; chat completions is ChatOpenAICompletions.
        yield ("chatlas (ChatOpenAICompletions)",
               "import time as _t\n_t0 = _t.perf_counter()\nfrom chatlas import ChatOpenAICompletions\n"
               "_load = _t.perf_counter() - _t0\n"
               f"chat = ChatOpenAICompletions(base_url={base!r}, api_key='x', model='opchat-local')",
               f"chat.chat({MESSAGE!r})")


async def server_time(url: str, kind: str, rounds: int = 7) -> float:
    """A warm plain client's time for the same reply (the server's own time)."""
    times = []
    async with aiohttp.ClientSession() as http:
        for i in range(rounds + 1):
            start = time.perf_counter()
            if kind == "openai":
                body = {"model": "opchat-local", "stream": True, "messages": [{"role": "user", "content": MESSAGE}]}
                async with http.post(url + "/v1/chat/completions", json=body) as r:
                    async for _ in r.content:
                        pass
            else:
                body = {"botId": "default", "newMessage": MESSAGE, "stream": True,
                        "messages": [{"role": "user", "content": MESSAGE}]}
                async with http.post(url + "/wp-json/mwai-ui/v1/chats/submit", json=body) as r:
                    async for _ in r.content:
                        pass
            if i:  # the first one warms the connection pool
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between the setup cell and the first cell")
    args = ap.parse_args(argv)

    results = {}
    with LocalServer(delay=0.0) as server:
        own = {"aiengine": asyncio.run(server_time(server.url, "aiengine")),
               "openai": asyncio.run(server_time(server.url, "openai"))}
        entries = list(contenders(server.url))
        for _ in range(args.rounds):
            for name, setup, cell in entries:
                with Kernel() as kernel:
                    t0 = time.perf_counter()
                    kernel.run(setup, timeout=120)
                    setup_time = time.perf_counter() - t0
                    load_time = kernel.value("_load")
                    time.sleep(args.pause)
                    ex = kernel.run(cell, timeout=120)
                    first = ex.finished - ex.started
                    again = kernel.run(cell, timeout=120)
                    second = again.finished - again.started
                results.setdefault(name, []).append((setup_time, first, second, load_time))

    print(f"\nFirst reply cell after loading: median of {args.rounds} fresh kernels each, "
          f"{args.pause:.1f} s pause after the setup cell\n")
    print("| contender | %load_ext / import | setup cell | first reply cell | second reply cell | "
          "server's own time | first cell overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        setup = statistics.median(r[0] for r in rows)
        first = statistics.median(r[1] for r in rows)
        second = statistics.median(r[2] for r in rows)
        own_time = own["aiengine"] if "AI Engine" in name else own["openai"]
        load = statistics.median(r[3] for r in rows)
        print(f"| {name} | {load * 1000:.0f} ms | {setup * 1000:.0f} ms | {first * 1000:.0f} ms | {second * 1000:.0f} ms | "
              f"{own_time * 1000:.0f} ms | {(first - own_time) * 1000:.0f} ms |")
    if importlib.util.find_spec("chatlas") is None:
        print("| chatlas | not installed (pip install chatlas) | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
