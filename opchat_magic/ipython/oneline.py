"""One-line chat: ``%opchat What is a monad?`` sends the rest of the line as a message.

Two things make this more than a line magic:

- IPython reads a line ending in ``?`` as a help request (its ``HelpEnd``
  token transformer turns ``%opchat What is a monad?`` into ``%pinfo monad``).
  :func:`transform_opchat_lines` runs among the *cleanup* transformers, before
  any token transformer, and rewrites such a line into a plain call, so the
  question reaches the model.
- The message is free text ("What's a monad?" has an unbalanced quote), so it
  is not split like shell arguments: only the leading flags are
  (:func:`parse_line`), and the rest is sent as typed.

The single words ``providers``, ``config``, ``models`` and ``help`` stay commands
(and ``models NAME``).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["COMMANDS", "LineRequest", "LineFlagError", "parse_line", "transform_opchat_lines", "is_command"]

COMMANDS = ("providers", "config", "models", "help")

# Flags of the one-line form: short and long names -> field.
_FLAGS = {"-t": "thread", "--thread": "thread", "-m": "model", "--model": "model",
          "-p": "provider", "--provider": "provider", "-s": "system", "--system": "system",
          "--image": "images"}
_FLAG = re.compile(r"\s*(--(?=\s|$)|--?[A-Za-z][\w-]*)(?:=|\s+|$)")
_VALUE = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'|\S+")
# A one-line chat at the start of a line: "%opchat " and at least one character.
_LINE = re.compile(r"^%opchat[ \t]+(\S.*?)[ \t]*(\r?\n)?$")
# `%opchat_explain [N] [flags]` (not `%opchat_explain?`, which asks for help).
_EXPLAIN = re.compile(r"^%opchat_explain(?:[ \t]+(.*?))?[ \t]*(\r?\n)?$")


class LineFlagError(ValueError):
    """A flag of the one-line form without its value, or one it does not know."""


@dataclass
class LineRequest:
    """The flags and the message of one ``%opchat ...`` line."""

    text: str = ""
    thread: Optional[str] = None
    model: Optional[str] = None
    provider: Optional[str] = None
    system: Optional[str] = None
    images: list = field(default_factory=list)


_MODELS_OF = re.compile(r"^models[ \t]+[\w.-]+$")  # `%opchat models NAME`: a provider's models


def is_command(line: str) -> bool:
    line = line.strip()
    return line in COMMANDS or bool(_MODELS_OF.match(line))


def parse_line(line: str) -> LineRequest:
    """Split leading ``-t/-m/-p/-s/--image`` flags from the message; ``--`` ends the flags."""
    request = LineRequest()
    rest = line
    while True:
        match = _FLAG.match(rest)
        if match is None:
            break
        flag = match.group(1)
        if flag == "--":
            rest = rest[match.end():]
            break
        name = _FLAGS.get(flag)
        if name is None:
            known = ", ".join(sorted({k for k in _FLAGS if k.startswith("--")} | {"-t", "-m", "-p", "-s"}))
            raise LineFlagError(f"%opchat does not know the flag {flag} (it takes {known}); "
                                "write -- before a message that starts with a dash.")
        value = _VALUE.match(rest, match.end())
        if value is None:
            raise LineFlagError(f"{flag} needs a value, e.g. %opchat {flag} NAME your question")
        raw = value.group(0)
        if raw[0] in "\"'":
            raw = shlex.split(raw)[0] if raw[0] == '"' else raw[1:-1]
        if name == "images":
            request.images.append(raw)
        else:
            setattr(request, name, raw)
        rest = rest[value.end():]
    request.text = rest.strip()
    return request


def transform_opchat_lines(lines: list, awaitable: bool = False) -> list:
    """Rewrite each ``%opchat <message>`` line into a call that IPython's help transformer leaves alone.

    ``awaitable`` (ipykernel with autoawait): the line becomes a top-level
    ``await``, so a kernel interrupt stops the stream at once, as a
    ``%%opchat`` cell does; ``%opchat_explain`` lines too. Lines inside an
    indented block are left to IPython.
    """
    if not lines or lines[0].lstrip().startswith("%%"):
        return lines
    out = []
    for line in lines:
        explain = _EXPLAIN.match(line) if awaitable else None
        if explain is not None and not (explain.group(1) or "").endswith("?"):
            out.append(f"await __import__('opchat_magic.ipython.oneline').ipython.oneline._await_explain("
                       f"{explain.group(1) or ''!r})" + (explain.group(2) or ""))
            continue
        match = _LINE.match(line)
        if match is None or is_command(match.group(1)):
            out.append(line)
            continue
        newline = match.group(2) or ""
        text = match.group(1)
        if awaitable:
            out.append(f"await __import__('opchat_magic.ipython.oneline').ipython.oneline._await_line({text!r})"
                       + newline)
        else:
            out.append(f"get_ipython().run_line_magic('opchat', {text!r})" + newline)
    return out


async def _await_explain(line: str):
    from IPython import get_ipython

    magics = get_ipython().magics_manager.registry["OpchatMagics"]
    return await magics.opchat_explain_async(line)


async def _await_line(line: str):
    from IPython import get_ipython

    magics = get_ipython().magics_manager.registry["OpchatMagics"]
    return await magics.opchat_line_async(line)
