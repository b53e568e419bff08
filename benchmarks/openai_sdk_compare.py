"""Our OpenAI-compatible provider against the official ``openai`` SDK, same server.

    python benchmarks/openai_sdk_compare.py [--repeat R] [--events N] [--size CHARS]

Starts the local server in a subprocess (``opchat-magic serve --port 0``: its own
process, so it does not share the GIL with the clients) and streams the same
``/v1/chat/completions`` requests through:

(sdk)       ``openai.AsyncOpenAI(...).chat.completions.create(stream=True)``, one client
            reused for every request (as the SDK is meant to be used);
(provider)  ``OpenAICompatible.create_async_generator(...)`` as the magic calls it
            (a new aiohttp session per reply);
(provider+) the same with one ``aiohttp.ClientSession`` reused (``session=``).

With ``--base-url URL [--model M]`` it measures a running server instead
(llama.cpp, Ollama, vLLM...): the same three clients, one workload at
temperature 0 with ``--max-tokens`` (default 64) so every run does the same work.

Two workloads (local server): *first token*, a short echo reply (time to first token is
mostly request overhead), and *throughput*, N events of CHARS characters with
no pause (each event counted as one token, as real servers send about one
token per event). Time to first token runs from the call to the first content
chunk; tokens/s from the first chunk to the end of the stream. Runs alternate
(sdk, provider, provider+, then the next round in another order) ``--repeat``
times; the table shows medians and the ratios to the SDK (TTFT: SDK / ours,
so > 1 means we are faster; tokens/s: ours / SDK, > 1 faster too).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import aiohttp  # noqa: E402
import openai  # noqa: E402

from opchat_magic.providers.openai_compat import OpenAICompatible  # noqa: E402

perf = time.perf_counter
MODEL = "opchat-local"


def start_server() -> "tuple[subprocess.Popen, str]":
    proc = subprocess.Popen(
        [sys.executable, "-m", "opchat_magic.server", "--port", "0", "--delay", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"listening on (http://\S+)", line or "")
        if found:
            return proc, found.group(1) + "/v1"
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the local server did not start")


OPTIONS: dict = {}  # sampling options for a real server (temperature, max_tokens)


async def via_sdk(client: "openai.AsyncOpenAI", messages: list) -> "tuple[float, float, int]":
    start = perf()
    first = None
    tokens = 0
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                  stream_options={"include_usage": True}, **OPTIONS)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = perf()
            tokens += 1
    end = perf()
    return first - start, end - first, tokens


async def via_provider(base: str, messages: list, session=None) -> "tuple[float, float, int]":
    start = perf()
    first = None
    tokens = 0
    stream = OpenAICompatible.create_async_generator(MODEL, messages, base_url=base, session=session, **OPTIONS)
    async for _ in stream:
        if first is None:
            first = perf()
        tokens += 1
    end = perf()
    assert stream.reply.complete
    return first - start, end - first, tokens


async def bench(base: str, repeat: int, events: int, size: int, real: bool = False) -> dict:
    workloads = {
        "first token": [{"role": "user", "content": "Name one fruit. [[delay:0]]"}],
        "throughput": [{"role": "user", "content": f"bench [[chunks:{events}]] [[chunk:{size}]] [[delay:0]]"}],
    }
    if real:  # a reply that runs on any model: chat models continue it, base models echo it
        workloads = {"model": [{"role": "user", "content": "Continue: " + ", ".join(str(i) for i in range(1, 100))}]}
    results: dict = {}
    async with openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as client, \
            aiohttp.ClientSession() as session:
        runners = {
            "sdk": lambda m: via_sdk(client, m),
            "provider": lambda m: via_provider(base, m),
            "provider+": lambda m: via_provider(base, m, session),
        }
        names = list(runners)
        for workload, messages in workloads.items():
            for name in names:  # warm-up: connections, imports, caches
                await runners[name](messages)
            for r in range(repeat):
                order = names[r % len(names):] + names[: r % len(names)]
                for name in order:
                    ttft, stream_time, tokens = await runners[name](messages)
                    rec = results.setdefault((workload, name), {"ttft": [], "tps": [], "tokens": tokens})
                    rec["ttft"].append(ttft)
                    rec["tps"].append(tokens / stream_time if stream_time > 0 else float("nan"))
    return results


def table(results: dict) -> str:
    rows = ["| workload | client | tokens | TTFT median (ms) | TTFT ratio SDK/ours | tokens/s median | tokens/s ratio ours/SDK |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for workload in dict.fromkeys(w for w, _ in results):
        sdk = results[(workload, "sdk")]
        sdk_ttft = statistics.median(sdk["ttft"])
        sdk_tps = statistics.median(sdk["tps"])
        for name in ("sdk", "provider", "provider+"):
            rec = results[(workload, name)]
            ttft = statistics.median(rec["ttft"])
            tps = statistics.median(rec["tps"])
            rows.append(
                f"| {workload} | {name} | {rec['tokens']} | {ttft * 1000:.2f} | {sdk_ttft / ttft:.2f} | "
                f"{tps:,.0f} | {tps / sdk_tps:.2f} |"
            )
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--base-url", help="measure this running server instead of the local one")
    parser.add_argument("--model", help="model for --base-url (default: the first it lists)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    global MODEL
    if args.base_url:
        base = args.base_url.rstrip("/")
        MODEL = args.model or asyncio.run(OpenAICompatible.list_models(base_url=base))[0]
        OPTIONS.update(temperature=0, max_tokens=args.max_tokens)
        results = asyncio.run(bench(base, args.repeat, args.events, args.size, real=True))
        print(f"openai SDK {openai.__version__} vs OpenAICompatible, {base} (model {MODEL}), "
              f"{args.repeat} alternating rounds, max_tokens={args.max_tokens}, temperature 0\n")
        print(table(results))
        return 0
    proc, base = start_server()
    try:
        results = asyncio.run(bench(base, args.repeat, args.events, args.size))
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"openai SDK {openai.__version__} vs OpenAICompatible, local server at {base} (own process), "
          f"{args.repeat} alternating rounds, throughput: {args.events} events of {args.size} chars\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
