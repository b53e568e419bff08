"""Drive terminal IPython in a real terminal (tmux): type lines, read the screen.

The terminal tests use it to check what a user of ``ipython`` sees: tables as
aligned text, not ``<IPython.core.display.Markdown object>``. Each session
runs on its own tmux server (``tmux -L <unique>``), killed on close.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Optional


class TerminalIPython:
    def __init__(self, env: Optional[dict] = None, width: int = 160, height: int = 50, cwd: Optional[str] = None):
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is needed for terminal tests (Debian: apt-get install tmux)")
        self.socket = "opchat-" + uuid.uuid4().hex[:10]
        command = f"{sys.executable} -m IPython --no-banner --colors=NoColor --no-confirm-exit --no-autoindent"
        self._env = {**os.environ, **(env or {}), "TERM": "xterm-256color"}
        self._tmux("new-session", "-d", "-s", "main", "-x", str(width), "-y", str(height), command, cwd=cwd)
        self._tmux("set-option", "-t", "main", "history-limit", "20000")
        self.wait_for("In [1]:", 60)

    def _tmux(self, *args: str, cwd: Optional[str] = None) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              env=self._env, cwd=cwd, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def screen(self) -> str:
        """Everything the terminal has shown (scrollback included), as text."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-20000", "-t", "main")

    def type(self, line: str) -> None:
        """Type ``line`` and press Enter (a line magic, or one line of code)."""
        self._tmux("send-keys", "-t", "main", "-l", line)
        self._tmux("send-keys", "-t", "main", "Enter")

    def run(self, line: str, timeout: float = 60) -> str:
        """Type ``line``, wait for the next prompt, return what appeared in between."""
        before = self.screen()
        prompts = before.count("In [")
        self.type(line)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.screen()
            if now.count("In [") > prompts:
                return now[len(before.rstrip()):] if now.startswith(before.rstrip()) else now
            time.sleep(0.05)
        raise TimeoutError(f"no prompt after {line!r} within {timeout} s:\n{self.screen()[-3000:]}")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not on screen within {timeout} s:\n{self.screen()[-3000:]}")

    def close(self) -> None:
        try:
            self._tmux("kill-server")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass

    def __enter__(self) -> "TerminalIPython":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
