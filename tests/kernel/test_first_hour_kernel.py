"""A newcomer's first hour, in a real kernel: the first cell with nothing reachable, the footer,
help, history output, export errors, tables."""
from __future__ import annotations

import re

import pytest

from opchat_magic.server import LocalServer
from opchat_magic.testing import free_port
from opchat_magic.testing.kernel import Kernel

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    env = {"OPCHAT_HISTORY_DB": str(tmp_path_factory.mktemp("hist") / "h.sqlite3")}
    with Kernel(env=env) as k:
        k.run("%load_ext opchat_magic")
        yield k


def _error_text(ex) -> str:
    err = ex.error or {}
    return "\n".join(err.get("traceback") or []) + "\n" + (err.get("evalue") or "")


def _shown(ex) -> str:
    return "\n".join(str(m["content"].get("data", {})) for m in ex.of_type("display_data", "update_display_data"))


def test_first_cell_with_the_local_server_down_says_start_it_once(kernel, server):
    port = free_port()
    # The probe looks at the usual ports; here, one real server on a free port stands in for them.
    kernel.run("import opchat_magic.probe as _p\n"
               f"_p.CANDIDATES = (_p.Candidate('vLLM', {server.port}, 'vllm'),"
               f" _p.Candidate('Ollama', {free_port()}, 'ollama'))\n"
               f"%config OpchatMagics.url = 'http://127.0.0.1:{port}'")
    ex = kernel.run("%%opchat\nhello?", check=False)
    assert ex.status == "error"
    text = _error_text(ex)
    # One message, once: the error says it all; nothing else is displayed (no second box).
    assert _shown(ex) == ""
    assert len(ex.of_type("error")) == 1
    assert text.count("Nothing is listening at") == 1
    assert f"opchat-magic serve --port {port}" in text
    # The server found running, with the exact lines to use it; the dead one is not offered.
    assert "%config OpchatMagics.provider = 'vllm'" in text
    assert f"%config OpchatMagics.url = 'http://127.0.0.1:{server.port}/v1'" in text
    assert "Ollama at" not in text
    assert "%opchat_retry -t default" in text
    assert "Traceback" not in text and "\\" not in text
    # Nothing switched on its own.
    assert kernel.value("get_ipython().magics_manager.registry['OpchatMagics'].settings.url") \
        == f"http://127.0.0.1:{port}"


def test_footer_names_registered_provider_server_model_tokens_in_out(kernel, server):
    kernel.run(f"%config OpchatMagics.url = {server.url!r}")
    ex = kernel.run("%%opchat\nhello footer")
    footer = [line for line in ex.markdown().splitlines() if "first chunk" in line][-1]
    assert re.search(r"opchatgpts · .+ · \d+ in / \d+ out tokens · first chunk \d\.\d\d s · \d+\.\d\d s",
                     footer.replace("\\", "")), footer
    assert "Opchatgpts" not in footer


def test_help_is_clean(kernel):
    doc = kernel.value("get_ipython().magics_manager.magics['cell']['opchat'].__doc__")
    assert doc.startswith("Usage: %%opchat [-t THREAD]")
    assert "::" not in doc and "``" not in doc


def test_history_has_separators_and_export_errors_are_clear(kernel, server, tmp_path):
    kernel.run(f"%config OpchatMagics.url = {server.url!r}")
    kernel.run("%%opchat -t sep\nfirst")
    kernel.run("%%opchat -t sep\nsecond")
    shown = kernel.run("%opchat_history sep").markdown()
    assert shown.count("\n---\n") == 1, shown
    ex = kernel.run(f"%opchat_history sep --export {tmp_path}/missing/dir/x.md", check=False)
    assert ex.status == "error"
    assert ex.error["ename"] == "UsageError"
    assert f"the folder {tmp_path}/missing/dir does not exist" in _error_text(ex)
    assert "Traceback" not in ex.stderr
    ok = kernel.run(f"%opchat_history sep --export {tmp_path}/x.md")
    assert "written to" in ok.stdout and (tmp_path / "x.md").read_text().count("\n---\n") == 1


def test_tables_carry_markdown_and_plain_text(kernel):
    for magic in ("%opchat_threads", "%opchat providers", "%opchat config", "%opchat_history sep"):
        ex = kernel.run(magic)
        data = ex.of_type("display_data")[-1]["content"]["data"]
        assert "text/markdown" in data and "text/plain" in data, magic
        assert "IPython.core.display" not in data["text/plain"], magic
