"""The input transformer: a ``%%opchat`` cell becomes a top-level ``await``.

Why: cell magics are called synchronously, so a blocking magic could only see
a kernel interrupt between its waits. In ipykernel with autoawait on, a cell
holding top-level ``await`` runs as a task, a kernel interrupt cancels it, and
the cancellation stops the stream at once. Transformers in
``input_transformers_cleanup`` run before ``%%`` magics are handled, so the
rewrite happens before IPython would call the magic.
"""
from __future__ import annotations

import re

MAGIC_NAME = "opchat"
_FIRST_LINE = re.compile(r"^\s*%%opchat(\s.*)?$", re.S)

__all__ = ["transform_opchat_cell", "install", "uninstall"]


def transform_opchat_cell(lines: list) -> list:
    """Rewrite a ``%%opchat`` cell into a top-level await (see module docstring)."""
    if not lines or not _FIRST_LINE.match(lines[0]):
        return lines
    first = lines[0].strip()
    if first.endswith("?"):
        return lines  # `%%opchat?` asks for help
    line = first[len("%%" + MAGIC_NAME):].strip()
    body = "".join(lines[1:])
    return [f"await __import__('opchat_magic.ipython.transformer').ipython.transformer"
            f"._await_cell({line!r}, {body!r})\n"]


async def _await_cell(line: str, cell: str):
    from IPython import get_ipython

    magics = get_ipython().magics_manager.registry["OpchatMagics"]
    return await magics.opchat_async(line, cell)


def _can_await(shell) -> bool:
    """True in ipykernel with autoawait on: the only place the rewrite is used."""
    return type(shell).__name__ == "ZMQInteractiveShell" and getattr(shell, "autoawait", False)


class _Transformer:
    """Applies the cell rewrite while the shell can run top-level await; the one-line
    rewrite (``oneline.py``: a question ending in ``?`` must not become a help request) always."""

    def __init__(self, shell):
        self.shell = shell

    def __call__(self, lines):
        from .oneline import transform_opchat_lines

        awaitable = _can_await(self.shell)
        if awaitable:
            lines = transform_opchat_cell(lines)
        return transform_opchat_lines(lines, awaitable=awaitable)


def install(shell) -> None:
    uninstall(shell)
    shell.input_transformers_cleanup.append(_Transformer(shell))


def uninstall(shell) -> None:
    # By class name too: a %reload_ext re-imports this module, and the old class is a different object.
    shell.input_transformers_cleanup[:] = [
        t for t in shell.input_transformers_cleanup if type(t).__name__ != "_Transformer"
        or type(t).__module__ != __name__]
