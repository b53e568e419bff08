"""What to tell a user whose endpoint did not answer: one message that fits.

The first cell of a newcomer usually fails here: nothing is configured and
opchatgpts.net is gone, or the URL points at a local server that is not
running. :func:`advise` turns the failure into ONE message (Markdown for
Jupyter, aligned plain text for a terminal) that says what happened in the
words of the situation and the next step:

=========================================  =========================================
situation                                   first advice
=========================================  =========================================
opchatgpts.net (the default) fails          the site is gone; ways to point elsewhere
connection refused on a local URL           start that server (``opchat-magic serve``,
                                            ``ollama serve``, ... by port)
DNS lookup failed                           the host name does not resolve: check it
anything else (TLS, timeout, closed)        the reason, and the ways out
=========================================  =========================================

It also lists the model servers :mod:`.probe` found running on their usual
ports, each with the exact ``%config`` lines. Nothing switches on its own.
The front door shows ``advice`` once (no second traceback box).
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence
from urllib.parse import urlsplit

from .probe import CANDIDATES, Found

__all__ = ["Advice", "advise", "is_unreachable", "probe_for", "probe_for_async", "LOCAL_HOSTS"]

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "[::1]"}
GONE_HOSTS = ("opchatgpts.net",)


@dataclass
class Advice:
    """One message in two renderings; displays as Markdown in Jupyter, as text in a terminal."""

    title: str          # one line: what happened
    markdown: str
    text: str
    kind: str           # gone | refused_local | dns | other
    found: List[Found]

    def _repr_markdown_(self) -> str:
        return self.markdown

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:  # a terminal's display() shows this
        return self.text

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self.text)


def is_unreachable(error: BaseException) -> bool:
    """Errors that mean "nothing answered there" (as opposed to an answer we did not like)."""
    from .errors import EndpointUnreachableError, NotAnEndpointError, StreamTimeoutError

    if isinstance(error, EndpointUnreachableError):
        return True
    if isinstance(error, StreamTimeoutError):
        return str(error).startswith("could not connect")
    if isinstance(error, NotAnEndpointError):
        return _host(getattr(error, "url", "") or "").endswith(GONE_HOSTS)
    return False


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _port(url: str) -> Optional[int]:
    try:
        parts = urlsplit(url)
        return parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None


def _origin(url: str) -> str:
    """``scheme://host:port`` of a URL (the part a user configured), else the URL."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def _code(text: str) -> str:
    """``text`` as an inline code span whatever it holds (URLs and model ids are not ours)."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    if reason:
        return str(reason)
    first = str(error).split("\n", 1)[0]
    m = re.search(r"\(([^()]*)\)\.?$", first)
    return m.group(1) if m else first


def _error_url(error: BaseException, url: str) -> str:
    return getattr(error, "url", None) or url


def advise(error: BaseException, url: str = "", provider: str = "", found: Sequence[Found] = ()) -> Advice:
    """The message for ``error`` (raised while talking to ``url``), with the ``found`` local servers."""
    url = _error_url(error, url)
    host, port = _host(url), _port(url)
    reason = _reason(error)
    local = host in LOCAL_HOSTS
    refused = "refused" in reason.lower()
    dns = "dns" in reason.lower() or "name or service not known" in reason.lower()
    starter = next((c for c in CANDIDATES if c.port == port), None)

    md: List[str] = []
    txt: List[str] = []

    def say(markdown: str, text: Optional[str] = None) -> None:
        md.append(markdown)
        txt.append(text if text is not None else re.sub(r"\*\*|`", "", markdown))

    if host.endswith(GONE_HOSTS):
        kind = "gone"
        title = f"{host} is gone: the site that ran this chatbot is offline ({reason})."
        say(f"**{host} is gone**: the site that ran this chatbot is offline ({_code(reason)}), "
            "so opchat-magic needs another endpoint.", title + " opchat-magic needs another endpoint.")
    elif local and refused:
        kind = "refused_local"
        origin = _origin(url)
        title = f"Nothing is listening at {origin} (connection refused)."
        say(f"**Nothing is listening at {_code(origin)}** (connection refused).", title)
        if starter is not None and starter.port != 8765:
            say(f"Start {starter.label} (`{starter.start}`), or start opchat-magic's local echo server: "
                f"`opchat-magic serve --port {port}`.",
                f"Start {starter.label} ({starter.start}), or opchat-magic's local echo server: "
                f"opchat-magic serve --port {port}")
        else:
            command = "opchat-magic serve" if port in (None, 8765) else f"opchat-magic serve --port {port}"
            say(f"Start the local server in a terminal: `{command}` (an echo server for trying things out).",
                f"Start the local server in a terminal: {command}  (an echo server for trying things out).")
    elif dns:
        kind = "dns"
        title = f"Cannot find the host {host or url} (DNS lookup failed)."
        say(f"**Cannot find the host {_code(host or url)}** (DNS lookup failed): check the URL "
            f"{_code(url)} for a typo, and the network connection.", title + f" Check the URL {url} and the network.")
    else:
        kind = "other"
        title = f"No chat endpoint answered at {url} ({reason})."
        say(f"**No chat endpoint answered at {_code(url)}** ({_code(reason)}).", title)

    found = list(found)
    if found:
        say("Running on this machine now (nothing switches on its own; run the lines to use one):",
            "Running on this machine now (nothing switches on its own; run the lines to use one):")
        for f in found:
            c = f.candidate
            models = f", models: {', '.join(_code(m) for m in f.models[:5])}" if f.models else ""
            models_txt = f", models: {', '.join(f.models[:5])}" if f.models else ""
            lines = "\n".join(f.config_lines)
            md.append(f"- {c.label} at {_code(c.endpoint)}{models}:\n\n  ```\n"
                      + "\n".join("  " + line for line in f.config_lines) + "\n  ```")
            txt.append(f"  - {c.label} at {c.endpoint}{models_txt}:\n"
                       + "\n".join("      " + line for line in lines.splitlines()))
    if kind != "refused_local" or not found:
        ways = [
            ("the local echo server: `opchat-magic serve`, then "
             "`%config OpchatMagics.url = 'http://127.0.0.1:8765'`"),
            "an Ollama or llama.cpp server: `%config OpchatMagics.provider = 'ollama'` (or `'llamacpp'`)",
            "an AI Engine site: `%config OpchatMagics.url = 'https://your-site'` (or the OPCHAT_URL variable)",
            ("any OpenAI-compatible server: `%config OpchatMagics.provider = 'openai'` with OPENAI_BASE_URL "
             "and OPCHAT_API_KEY in the environment"),
        ]
        if kind == "refused_local":
            ways = ways[1:]
        if not found:
            say("No local model server (Ollama, llama.cpp, LM Studio, vLLM, opchat-magic serve) answers on its "
                "usual port. Ways to point opchat-magic at an endpoint:",
                "No local model server (Ollama, llama.cpp, LM Studio, vLLM, opchat-magic serve) answers on its "
                "usual port. Ways to point opchat-magic at an endpoint:")
        else:
            say("Other ways:", "Other ways:")
        md.append("\n".join(f"- {w}" for w in ways))
        txt.append("\n".join("  - " + re.sub(r"`", "", w) for w in ways))
    return Advice(title=title, markdown="\n\n".join(md), text="\n".join(txt), kind=kind, found=found)


def probe_for(error: BaseException, url: str = "", timeout: float = 0.3) -> List[Found]:
    """Probe the usual local ports, except the one that just failed."""
    from .probe import probe_sync

    return probe_sync(timeout=timeout, skip_ports=_skip_ports(error, url))


def _skip_ports(error: BaseException, url: str) -> List[int]:
    url = _error_url(error, url)
    return [_port(url)] if _host(url) in LOCAL_HOSTS and _port(url) else []


async def probe_for_async(error: BaseException, url: str = "", timeout: float = 0.3) -> List[Found]:
    """:func:`probe_for` from a coroutine: on the private loop (the panel) or any other (an awaited cell)."""
    from .loop import get_loop
    from .probe import probe

    loop = get_loop()
    coro = probe(timeout=timeout, skip_ports=_skip_ports(error, url))
    try:
        if loop.in_loop_thread():
            return await coro
        return await asyncio.wrap_future(loop.submit(coro).future)
    except asyncio.CancelledError:
        raise
    except Exception:  # a probe must never turn one failure into two
        return []
