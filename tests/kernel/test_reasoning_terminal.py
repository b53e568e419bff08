"""Reasoning in terminal IPython, in a real terminal (tmux): labelled apart, before the answer, dimmed."""
from __future__ import annotations

import shutil

import pytest

from opchat_magic.server import LocalServer, reply_text
from opchat_magic.server.faults import reasoning_text

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"), pytest.mark.timeout(120)]


def test_terminal_shows_thinking_apart_before_the_answer(tmp_path):
    from opchat_magic.testing.terminal import TerminalIPython

    with LocalServer(delay=0.01) as server, TerminalIPython(env={"IPYTHONDIR": str(tmp_path / "ipy")}) as term:
        term.run("%load_ext opchat_magic")
        term.run("%config OpchatMagics.provider = 'openai'")
        term.run(f"%config OpchatMagics.url = {server.openai_base_url!r}")
        term.run("%config OpchatMagics.persist = False")
        # a cell magic in a terminal: type it as one line with an explicit newline escape
        shown = term.run("get_ipython().run_cell_magic('opchat', '', 'Why? [[fault:reasoning]]')")
        messages = [{"role": "user", "content": "Why? [[fault:reasoning]]"}]
        thought, answer = reasoning_text(reply_text(messages)), reply_text(messages)
        flat = " ".join(shown.split())
        assert "[thinking] " + thought in flat
        assert "[/thinking]" in flat
        assert flat.index("[/thinking]") < flat.index(" ".join(answer.split()))
        assert flat.count(thought) == 1  # shown once, not repeated with the answer
