"""Terminal IPython (no frontend): the reply is printed as it arrives."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from opchat_magic.server import LocalServer, reply_text


def test_terminal_ipython_prints_the_stream(tmp_path):
    with LocalServer(delay=0.03) as server:
        # Each run_cell is one cell, as the terminal runs what the user types.
        code = ("ip = get_ipython()\n"
                "ip.run_cell('%load_ext opchat_magic')\n"
                f"ip.run_cell({'%config OpchatMagics.url = ' + repr(server.url)!r})\n"
                "ip.run_cell('%config OpchatMagics.persist = False')\n"
                "r = ip.run_cell('%%opchat\\nhello terminal [[chunks:40]]')\n"
                "print('RESULT', r.success)\n")
        env = dict(os.environ, IPYTHONDIR=str(tmp_path / "ipy"))
        proc = subprocess.Popen([sys.executable, "-m", "IPython", "--no-banner", "--colors=NoColor", "-c", code],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        # Read as it comes: the first part of the reply must appear before the stream ends.
        expected = reply_text([{"role": "user", "content": "hello terminal [[chunks:40]]"}],
                              chunk_size=server.config.chunk_size)
        seen, first_at = b"", None
        deadline = time.monotonic() + 60
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            piece = proc.stdout.read() or b""
            if piece and first_at is None and expected[:10].encode() in seen + piece:
                first_at = time.monotonic()
                streams_at_first = server.stats.completed
            seen += piece
            if proc.poll() is not None:
                seen += proc.stdout.read() or b""
                break
            time.sleep(0.02)
    out = seen.decode(errors="replace")
    assert "RESULT True" in out, out
    assert " ".join(expected.split()) in " ".join(out.split())
    assert first_at is not None and streams_at_first == 0, "the reply only appeared after the stream ended"


def test_terminal_one_line_question_reaches_the_model(tmp_path):
    """In terminal IPython a line ending in '?' would be a help request; typed in a real terminal
    (tmux), the question reaches the server and its reply prints."""
    from opchat_magic.testing.terminal import TerminalIPython

    with LocalServer(delay=0.0) as server:
        term = TerminalIPython(env={"IPYTHONDIR": str(tmp_path / "ipy"), "OPCHAT_HISTORY_DB": str(tmp_path / "h.db")})
        try:
            term.run("%load_ext opchat_magic")
            term.run(f"%config OpchatMagics.url = {server.url!r}")
            term.run("1/0")
            shown = term.run("%opchat What is a monad?")
            assert server.stats.last_body["newMessage"] == "What is a monad?"
            assert "Echo: What is a monad?" in shown and "not found" not in shown, shown
            shown = term.run("%opchat_explain")
            assert "ZeroDivisionError" in server.stats.last_body["newMessage"], server.stats.last_body
            assert "Echo: Explain " in shown, shown
        finally:
            term.close()
