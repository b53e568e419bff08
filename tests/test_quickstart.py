"""The README's quickstart command runs the notebook end to end and keeps the replies."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_saves_replies(tmp_path):
    out = tmp_path / "quickstart.out.ipynb"
    env_dir = tmp_path / "ipy"
    proc = subprocess.run(
        [sys.executable, "-m", "opchat_magic.quickstart", str(ROOT / "notebooks" / "quickstart.ipynb"),
         "--output", str(out)],
        capture_output=True, text=True, timeout=240,
        env={**__import__("os").environ, "IPYTHONDIR": str(env_dir),
             "OPCHAT_HISTORY_DB": str(tmp_path / "h.sqlite3")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Echo: Hello! What can you do?" in proc.stdout
    nb = nbformat.read(out, as_version=4)
    saved = "\n".join(o.get("data", {}).get("text/markdown", "")
                      for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # Static Markdown outputs in the saved file: history counted, threads, reset.
    assert "This conversation has 5 messages." in saved
    assert "Echo: Tell me about sourdough bread." in saved
    assert "Echo: Are we starting over?" in saved and saved.count("This conversation has 1 message.") >= 3
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
