"""opchat-magic's public testing API: drive the real things a notebook tool runs in.

Kept in the installed package on purpose (not hidden in ``tests/``): our test
suite and ``benchmarks/`` use it, and so can anyone who wants to test their
own notebook setup against opchat-magic.

* ``opchat_magic.testing.kernel``: ``Kernel`` (a real Jupyter kernel in a
  subprocess; ``run``, ``value``, ``interrupt``; every iopub message and its
  bytes kept) and ``message_bytes``. Needs ``jupyter_client``/``ipykernel``.
* ``opchat_magic.testing.browser``: JupyterLab / Notebook 7 + Debian's
  Chromium through Playwright (``chromium``, ``open_notebook``, ``NotebookPage``).
* ``opchat_magic.testing.terminal``: terminal IPython in tmux.
* ``free_port()``: a free TCP port on 127.0.0.1.

Each submodule imports its heavy dependencies only when used; importing this
package costs nothing.
"""
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
