"""The deterministic reply text, shared by both endpoints.

Tests compute the expected reply with :func:`reply_text` instead of copying
strings, so the format lives in one place:

* Plain turn::

      Echo: <last user message, directives removed, stripped>

      This conversation has <N> message<s>.[ The last message carries <K> image<s>: <mime>, ...]

  (the bracketed part only when the last user message has ``image_url`` parts).
  ``N`` is ``len(messages)`` as received; "message" is singular only for N == 1.
  The echoed text is ``new_message`` when given (the AI Engine ``newMessage``),
  otherwise the content of the last message whose role is ``user``. OpenAI
  content-part lists are reduced to their ``text`` parts joined with ``\\n``.

* Directives, written anywhere in that text as ``[[name]]`` or ``[[name:value]]``,
  are removed from the echo and change the turn:

  ====================  =====================================================
  ``[[words:N]]``       reply = :func:`long_text` ``(N)``: exactly N words
                        (``str.split``) shaped like model output.
  ``[[chunks:N]]``      reply = the first N * chunk_size characters of that
                        kind of text, so exactly N chunks. Wins over words.
  ``[[chunk:K]]``       chunk size K characters for this request.
  ``[[delay:S]]``       S seconds between chunks for this request (0 allowed).
  ``[[html]]``          reply = :data:`HOSTILE_REPLY` (script, onerror img,
                        javascript: link, plus normal Markdown). Wins over all.
  ``[[say:B64]]``       reply = exactly the text whose UTF-8 is the unpadded
                        URL-safe base64 ``B64`` (:func:`say_encode`): hostile
                        replies, escapes, any bytes a test needs. Wins over
                        all but ``[[html]]``.
  ``[[fault:NAME]]``    inject fault NAME (see ``faults.py``) for this request.
  ``[[huge:N]]``        size in bytes of the ``huge_line`` fault's event.
  ====================  =====================================================

  A directive whose value does not parse (``[[words:lots]]``) is not a
  directive: it stays in the echo, so the mistake is visible.

Chunks are ``text[i:i + chunk_size]`` slices (characters, not bytes).
Token counts are an approximation, ceil(characters / 4), that is good enough
for tests to check the ``usage`` plumbing.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

__all__ = [
    "Directives",
    "HOSTILE_REPLY",
    "parse_directives",
    "message_text",
    "last_user_text",
    "reply_text",
    "echo_history",
    "compose",
    "long_text",
    "text_of_length",
    "split_chunks",
    "count_tokens",
    "prompt_tokens",
    "usage",
    "say_encode",
    "say_decode",
]

# Bounds keep a typo like [[words:99999999]] from eating the machine.
MAX_WORDS = 1_000_000
MAX_CHUNKS = 2_000_000
MAX_CHUNK = 1 << 20
MAX_DELAY = 60.0
MAX_HUGE = 64 << 20

HOSTILE_REPLY = (
    "# Hostile reply\n\n"
    "This reply tries to run code in the page; none of it may execute.\n\n"
    "<script>window.__pwned=1</script>\n\n"
    '<img src=x onerror="window.__pwned=2">\n\n'
    "[click](javascript:window.__pwned=3)\n\n"
    "Normal **Markdown** still renders:\n\n"
    "- a *list* item\n"
    "- `inline code`\n\n"
    "```python\nprint('safe')\n```\n"
)

_DIRECTIVE = re.compile(r"\[\[([a-z_]+)(?::([^\[\]]*))?\]\]")


@dataclass(frozen=True)
class Directives:
    """What the ``[[...]]`` directives of one message asked for (None = not given)."""

    words: Optional[int] = None
    chunks: Optional[int] = None
    chunk: Optional[int] = None
    delay: Optional[float] = None
    html: bool = False
    fault: Optional[str] = None
    huge: Optional[int] = None
    say: Optional[str] = None


def _int_in(lo: int, hi: int):
    def parse(value: str) -> int:
        number = int(value)
        if not lo <= number <= hi:
            raise ValueError(value)
        return number

    return parse


def _delay(value: str) -> float:
    number = float(value)
    if not 0 <= number <= MAX_DELAY:  # also rejects nan
        raise ValueError(value)
    return number


def _fault_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]+", value):
        raise ValueError(value)
    return value


# name -> parser of the value (None: the directive takes no value)
_PARSERS = {
    "words": _int_in(0, MAX_WORDS),
    "chunks": _int_in(0, MAX_CHUNKS),
    "chunk": _int_in(1, MAX_CHUNK),
    "delay": _delay,
    "fault": _fault_name,
    "huge": _int_in(1, MAX_HUGE),
    "html": None,
    "say": lambda value: say_decode(value),
}


def say_encode(text: str) -> str:
    """The ``[[say:...]]`` value that makes the server reply with exactly ``text``."""
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def say_decode(value: str) -> str:
    """The text of a ``[[say:...]]`` value (unpadded URL-safe base64 of UTF-8); ValueError if not."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        raise ValueError(value)
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise ValueError(value) from None


def parse_directives(text: str) -> "tuple[str, Directives]":
    """Split ``text`` into (text without valid directives, stripped; Directives)."""
    found: dict = {}

    def take(match: "re.Match[str]") -> str:
        name, value = match.group(1), match.group(2)
        if name not in _PARSERS:
            return match.group(0)
        parser = _PARSERS[name]
        if parser is None:
            if value is not None:
                return match.group(0)
            found[name] = True
            return ""
        if value is None:
            return match.group(0)
        try:
            found[name] = parser(value.strip())
        except ValueError:
            return match.group(0)
        return ""

    clean = _DIRECTIVE.sub(take, text)
    return clean.strip(), Directives(**found)


def message_text(content: Any) -> str:
    """The text of one message's ``content`` (a string or OpenAI content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(parts)
    return "" if content is None else str(content)


def last_user_text(messages: Iterable[Any]) -> str:
    """Content of the last ``role == "user"`` message ("" if there is none)."""
    for message in reversed(list(messages or ())):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def compose(messages: Any, new_message: Optional[str] = None, *, chunk_size: int = 5) -> "tuple[str, Directives]":
    """The reply text for a request, and the directives that shaped it."""
    raw = new_message if new_message is not None else last_user_text(messages)
    echo, directives = parse_directives(raw)
    size = directives.chunk or chunk_size
    if directives.html:
        return HOSTILE_REPLY, directives
    if directives.say is not None:
        return directives.say, directives
    if directives.chunks is not None:
        return text_of_length(directives.chunks * size), directives
    if directives.words is not None:
        return long_text(directives.words), directives
    count = len(messages) if isinstance(messages, list) else 0
    noun = "message" if count == 1 else "messages"
    seen = "" if new_message is not None else _images_seen(messages)
    return f"Echo: {echo}\n\nThis conversation has {count} {noun}.{seen}", directives


def _images_seen(messages: Any) -> str:
    """" It carries N image(s): image/png, ..." for the last user message's image parts, else ""."""
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            parts = [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"] \
                if isinstance(content, list) else []
            if not parts:
                return ""
            kinds = [str((p.get("image_url") or {}).get("url", ""))[5:].split(";", 1)[0] or "?" for p in parts]
            return f" The last message carries {len(parts)} image{'s' if len(parts) > 1 else ''}: {', '.join(kinds)}."
    return ""


def echo_history(*texts: str) -> list:
    """The messages a thread sends after plain turns ``texts``: each earlier one
    answered with its :func:`reply_text`, the last one still waiting for its reply."""
    messages: list = []
    for i, text in enumerate(texts):
        messages.append({"role": "user", "content": text})
        if i < len(texts) - 1:
            messages.append({"role": "assistant", "content": reply_text(messages)})
    return messages


def reply_text(messages: Any, new_message: Optional[str] = None, *, chunk_size: int = 5) -> str:
    """The exact reply the server streams for ``messages`` (see the module docstring).

    Pass the server's ``chunk_size`` when the message uses ``[[chunks:N]]``
    without ``[[chunk:K]]``: the reply length depends on it.
    """
    return compose(messages, new_message, chunk_size=chunk_size)[0]


def split_chunks(text: str, size: int) -> "list[str]":
    """``text`` in consecutive slices of ``size`` characters (the last may be shorter)."""
    size = max(1, int(size))
    return [text[i : i + size] for i in range(0, len(text), size)]


def count_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(count_tokens(message_text(m.get("content"))) for m in messages if isinstance(m, dict))


def usage(prompt: int, reply: str) -> dict:
    completion = count_tokens(reply)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- long, model-like text -------------------------------------------------

_VOCAB = (
    "stream token model reply server chunk buffer latency event kernel notebook "
    "widget render history context message signal network python cell output "
    "socket frame parser decoder thread future task loop queue cache index "
    "layout markdown heading paragraph bullet fence block budget timeout retry "
    "session cursor window scroll update display handle client request payload"
).split()


class _Words:
    """A tiny linear congruential generator: the same words on every Python."""

    def __init__(self, seed: int = 12345):
        self._state = seed & 0xFFFFFFFF

    def word(self) -> str:
        self._state = (self._state * 1103515245 + 12345) & 0x7FFFFFFF
        return _VOCAB[(self._state >> 8) % len(_VOCAB)]

    def take(self, n: int) -> "list[str]":
        return [self.word() for _ in range(n)]


def _paragraph(words: _Words, n: int) -> str:
    # Sentences of 12 words, capitalised and closed with a period.
    out = words.take(n)
    for i in range(0, n, 12):
        out[i] = out[i].capitalize()
        end = min(i + 12, n) - 1
        out[end] += "."
    return " ".join(out)


def _heading(words: _Words, level: int) -> str:
    return "#" * level + " " + " ".join(w.capitalize() for w in words.take(3))


def _bullets(words: _Words) -> str:
    return "\n".join("- " + " ".join(words.take(7)) for _ in range(5))


def _code(words: _Words) -> str:
    a, b, c = words.take(3)
    return (
        "```python\n"
        f"def {a}_{b}(items):\n"
        f"    total = 0\n"
        f"    for {c} in items:\n"
        f"        total += len({c})\n"
        f"    return total\n"
        "```"
    )


def long_text(n: int) -> str:
    """Exactly ``n`` words (by ``str.split``) of Markdown shaped like a model's answer.

    A ``# heading``, paragraphs of 60 words, a 5-item bullet list, a fenced
    ```python block, another paragraph; then again under ``##`` headings until
    the budget is spent. When a structured piece no longer fits, the rest is
    one short paragraph. Deterministic.
    """
    words = _Words()
    parts: "list[str]" = []
    left = max(0, int(n))
    plan = ("h1", "p", "p", "ul", "code", "p")
    step = 0
    while left > 0:
        kind = plan[step % len(plan)]
        if kind == "h1" and step:
            kind = "h2"
        step += 1
        if kind == "p":
            piece = _paragraph(words, min(60, left))
        else:
            piece = {"h1": lambda: _heading(words, 1), "h2": lambda: _heading(words, 2), "ul": lambda: _bullets(words), "code": lambda: _code(words)}[kind]()
            if len(piece.split()) > left:
                piece = _paragraph(words, left)
        parts.append(piece)
        left -= len(piece.split())
    return "\n\n".join(parts)


def text_of_length(n_chars: int) -> str:
    """Exactly ``n_chars`` characters of :func:`long_text` (cut at the end)."""
    if n_chars <= 0:
        return ""
    # Every word token is at least 1 character plus a separator.
    return long_text(n_chars // 2 + 8)[:n_chars]

