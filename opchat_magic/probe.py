"""Find chat servers already running on this machine, on their usual ports.

When the configured endpoint does not answer, the first cell looks here
before it explains the failure, so it can offer what is already running
(an Ollama, a llama.cpp ``llama-server``, LM Studio, vLLM, or our own
``opchat-magic serve``) with the exact ``%config`` lines to use it. Nothing
switches on its own: this module only reports.

A candidate counts only if ``GET /v1/models`` on 127.0.0.1 answers with an
OpenAI-style model list (``{"data": [{"id": ...}]}``): a web server that
happens to sit on port 8080 or 8000 is not offered. Every probe runs at
once, on raw asyncio streams (no aiohttp session to build), and the whole
search is bounded by ``timeout`` (0.3 s by default): a port that accepts
but never answers costs no more than that.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

__all__ = ["Candidate", "Found", "CANDIDATES", "probe", "probe_sync"]


@dataclass(frozen=True)
class Candidate:
    """A kind of local server: what it is called, where it usually listens, how we talk to it."""

    label: str      # what a user calls it ("Ollama")
    port: int
    provider: str   # our provider name, as registered (see `%opchat providers`)
    url: str = ""   # the value for OpchatMagics.url; "" means http://127.0.0.1:PORT/v1
    start: str = ""  # how a user starts it (for the "nothing is listening" advice)

    @property
    def endpoint(self) -> str:
        return self.url or f"http://127.0.0.1:{self.port}/v1"


@dataclass
class Found:
    """A candidate that answered, with the models it listed (ids as the server gave them)."""

    candidate: Candidate
    models: List[str] = field(default_factory=list)

    @property
    def config_lines(self) -> List[str]:
        """The exact lines that switch the magic to this server (both: a URL set earlier would win otherwise)."""
        c = self.candidate
        lines = [f"%config OpchatMagics.provider = {c.provider!r}", f"%config OpchatMagics.url = {c.endpoint!r}"]
        if self.models and c.provider != "opchatgpts":
            lines.append(f"%config OpchatMagics.model = {self.models[0]!r}")
        return lines


# The usual ports. Our own server speaks AI Engine (the default provider) as well
# as OpenAI; it is offered as AI Engine, the quickstart's path.
CANDIDATES: Tuple[Candidate, ...] = (
    Candidate("opchat-magic serve (the local echo server)", 8765, "opchatgpts", "http://127.0.0.1:8765",
              "opchat-magic serve"),
    Candidate("Ollama", 11434, "ollama", start="ollama serve"),
    Candidate("llama.cpp (llama-server)", 8080, "llamacpp", start="llama-server -m MODEL.gguf --port 8080"),
    Candidate("LM Studio", 1234, "lmstudio", start="LM Studio: Developer tab, Start Server"),
    Candidate("vLLM", 8000, "vllm", start="vllm serve MODEL"),
)

_MAX_BODY = 256 * 1024  # a model list; more than this is not one


def _parse_models(raw: bytes) -> Optional[List[str]]:
    """The model ids of an HTTP/1.0 answer to GET /v1/models, or None if it is not a model list."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return None
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    models = [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
    # Ids are printed inside `%config` lines: keep them one printable line each.
    return [m for m in models if m.isprintable() and len(m) <= 200][:20]


async def _ask(candidate: Candidate, host: str) -> Optional[Found]:
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, candidate.port)
        writer.write(f"GET /v1/models HTTP/1.0\r\nHost: {host}:{candidate.port}\r\n"
                     f"Accept: application/json\r\nConnection: close\r\n\r\n".encode("ascii"))
        await writer.drain()
        raw = await reader.read(_MAX_BODY)
        while raw and len(raw) < _MAX_BODY:
            more = await reader.read(_MAX_BODY - len(raw))
            if not more:
                break
            raw += more
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        if writer is not None:
            writer.close()
    models = _parse_models(raw)
    return None if models is None else Found(candidate, models)


async def probe(candidates: Optional[Sequence[Candidate]] = None, *, timeout: float = 0.3,
                host: str = "127.0.0.1", skip_ports: Sequence[int] = ()) -> List[Found]:
    """The candidates (default: :data:`CANDIDATES`, read at call time so tests can swap it)
    that answer as model servers, in order, within ``timeout`` in all."""
    candidates = CANDIDATES if candidates is None else candidates
    wanted = [c for c in candidates if c.port not in set(skip_ports)]
    if not wanted:
        return []
    tasks = [asyncio.ensure_future(_ask(c, host)) for c in wanted]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=0.05)  # let them close their sockets
    return [t.result() for t in tasks if t in done and not t.cancelled() and t.exception() is None and t.result()]


def probe_sync(candidates: Optional[Sequence[Candidate]] = None, *, timeout: float = 0.3,
               host: str = "127.0.0.1", skip_ports: Sequence[int] = ()) -> List[Found]:
    """:func:`probe` from synchronous code (a cell): run on opchat-magic's private loop."""
    from .loop import get_loop

    start = time.monotonic()
    try:
        return get_loop().run(probe(candidates, timeout=timeout, host=host, skip_ports=skip_ports),
                              timeout=timeout + 0.5)
    except Exception:  # a probe must never turn one failure into two
        return []
    finally:
        probe_sync.last_seconds = time.monotonic() - start  # for tests and benchmarks


probe_sync.last_seconds = 0.0
