"""The one footer under a reply, the same in the cell and in the panel.

::

    opchatgpts · opchat-local · 22 in / 13 out tokens · first chunk 0.03 s · 0.15 s
    openai · gpt-4o-mini · 40 in / 310 out tokens (250 reasoning) · first chunk 0.41 s · 3.20 s
    ollama · llama3.2 · usage not reported · first chunk 0.20 s · 1.10 s · input cut: 12 earlier messages left out

In order: the provider's name as registered (``%opchat providers``), the model
the server says it used (``reply.model``), the server it came from
(``host:port`` of ``reply.endpoint``, when the provider records it), tokens in and out when the server
reported them (and reasoning tokens), the time to the first chunk and the
total time, then notes (what the context helper cut from the input, ...).
Plain text: the faces escape it for Markdown. It never includes the history's
total, only this turn's request and reply.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

__all__ = ["footer_text", "usage_text", "USAGE_NOT_REPORTED"]

SEP = " · "
USAGE_NOT_REPORTED = "usage not reported"


def _count(usage: Any, *names: str) -> Optional[int]:
    if usage is None:
        return None
    for name in names:
        value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def usage_text(usage: Any) -> str:
    """``22 in / 13 out tokens (5 reasoning)`` from a Usage (or its dict); "" when nothing is known."""
    tokens_in = _count(usage, "prompt_tokens", "input_tokens")
    tokens_out = _count(usage, "completion_tokens", "output_tokens")
    reasoning = _count(usage, "reasoning_tokens")
    total = _count(usage, "total_tokens")
    if tokens_in is None and tokens_out is None:
        if total is None:
            return ""
        text = f"{total} tokens"
    else:
        text = " / ".join(p for p in (
            f"{tokens_in} in" if tokens_in is not None else "",
            f"{tokens_out} out" if tokens_out is not None else "") if p) + " tokens"
    if reasoning:
        text += f" ({reasoning} reasoning)"
    return text


def endpoint_text(endpoint: str) -> str:
    """Where the reply came from, short: ``host:port`` of ``reply.endpoint`` (already credential-free)."""
    if not endpoint:
        return ""
    rest = endpoint.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1]


def _provider_name(reply: Any, provider: str) -> str:
    if provider:
        return provider
    name = getattr(reply, "provider", "") or ""
    if not name:
        return ""
    from ..providers.registry import name_of

    return name_of(name) or name


def footer_text(reply: Any, provider: str = "", notes: Sequence[str] = ()) -> str:
    """The footer line for ``reply`` (a :class:`~opchat_magic.providers.base.Reply`, or a record of one).

    ``provider``: the registered name the turn used (else looked up from ``reply.provider``);
    ``notes``: short remarks appended at the end (e.g. what was cut from the input).
    """
    parts = [p for p in (_provider_name(reply, provider), getattr(reply, "model", "") or "",
                         endpoint_text(getattr(reply, "endpoint", "") or "")) if p]
    usage = usage_text(getattr(reply, "usage", None))
    parts.append(usage or USAGE_NOT_REPORTED)
    first = getattr(reply, "time_to_first_chunk", None)
    total = getattr(reply, "total_time", None)
    if first is not None:
        parts.append(f"first chunk {first:.2f} s")
    if total is not None:
        parts.append(f"{total:.2f} s")
    parts.extend(n.strip() for n in notes if n and n.strip())
    return SEP.join(" ".join(p.split()) for p in parts)
