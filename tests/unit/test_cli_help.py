"""`opchat-magic serve --help` tells a newcomer what the local server is and lists every directive."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

from opchat_magic.server.replies import Directives


def test_serve_help_says_echo_server_and_lists_every_directive():
    proc = subprocess.run([sys.executable, "-m", "opchat_magic.cli", "serve", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    text = proc.stdout
    assert "echo server, not a model" in text
    for field in dataclasses.fields(Directives):
        assert f"[[{field.name}" in text, f"directive {field.name} missing from serve --help"
