"""How an opchat error shows in a cell: one clear paragraph, never a stack of library frames."""
from __future__ import annotations

from ..errors import OpchatError
from ..scrub import show_controls

__all__ = ["quiet"]


def quiet(error: BaseException, text: str) -> BaseException:
    """Make IPython show ``text`` instead of a traceback for ``error``.

    The error keeps its type (so tools see `HTTPStatusError`, say), but a user
    reads one clear sentence, never a stack of aiohttp frames. Control
    characters in it (a server's text) show as visible escapes, in a terminal too.
    """
    text = show_controls(text)
    if not isinstance(error, Exception):
        error = OpchatError(text)
    try:
        error._render_traceback_ = lambda: text.splitlines()
    except AttributeError:  # exceptions with __slots__
        wrapped = OpchatError(text)
        wrapped._render_traceback_ = lambda: text.splitlines()
        return wrapped
    return error
