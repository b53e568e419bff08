"""Terminal IPython in a real terminal (tmux): the magics' tables and transcripts as aligned text."""
from __future__ import annotations

import re
import shutil

import pytest

from opchat_magic.testing.terminal import TerminalIPython

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (Debian: apt-get install tmux)")


def test_terminal_ipython_prints_the_table_as_text(tmp_path):
    with TerminalIPython(env={"IPYTHONDIR": str(tmp_path / "ipy")}) as term:
        term.run("from opchat_magic.render.tables import Table")
        shown = term.run("display(Table(['thread', 'messages'], [['default', 6], ['ideas', 12]]))")
    assert "<IPython.core.display" not in shown
    assert "thread   messages" in shown
    assert "default  6" in shown and "ideas    12" in shown


def test_terminal_ipython_magics_print_aligned_text(tmp_path):
    """The real magics in terminal IPython (tmux): tables and transcripts as text, never an object repr."""
    from opchat_magic.server import LocalServer

    env = {"IPYTHONDIR": str(tmp_path / "ipy"), "OPCHAT_HISTORY_DB": str(tmp_path / "h.sqlite3")}
    with LocalServer(delay=0) as server, TerminalIPython(env=env) as term:
        term.run("%load_ext opchat_magic")
        term.run(f"%config OpchatMagics.url = {server.url!r}")
        term.run("get_ipython().run_cell('%%opchat -t notes\\nhello terminal')")
        term.run("get_ipython().run_cell('%%opchat -t notes\\nagain')")
        threads = term.run("%opchat_threads")
        history = term.run("%opchat_history notes")
        providers = term.run("%opchat providers")
        config = term.run("%opchat config")
    for shown in (threads, history, providers, config):
        assert "<IPython.core.display" not in shown, shown
    assert re.search(r"thread\s+messages\s+last turn\n-+\s+-+\s+-+\n", threads), threads
    assert re.search(r"notes\s+4\s+ok", threads), threads
    assert "You:\nhello terminal" in history and "Assistant:\nEcho: hello terminal" in history
    assert "-" * 72 in history  # a line between turns
    assert re.search(r"ollama\s+yes", providers), providers
    assert re.search(r"url\s+'http://127\.0\.0\.1:\d+'", config), config
