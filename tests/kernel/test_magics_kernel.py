"""The magics in a real ipykernel, talking to the local server over 127.0.0.1."""
from __future__ import annotations

import re
import time

import pytest

from opchat_magic.server import echo_history as user, LocalServer, reply_text
from opchat_magic.testing import free_port
from opchat_magic.testing.kernel import Kernel

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0.005) as srv:
        yield srv


@pytest.fixture(scope="module")
def kernel(server, kernel_on):
    return kernel_on(server, "chat.ipynb",
                     env={"OPCHAT_BASE_URL": server.openai_base_url, "OPCHAT_MODEL": "opchat-local"})


@pytest.fixture(autouse=True)
def fresh(kernel, server):
    server.clear_fault()
    kernel.run("%opchat_reset --all")
    yield




def test_reply_streams_incrementally_and_renders_markdown(kernel, server):
    ex = kernel.run("%%opchat\nHello there [[chunks:80]] [[delay:0.02]]", timeout=60)
    shown = ex.of_type("display_data", "update_display_data")
    # The reply arrived over ~1.6 s; the frontend saw it grow, not appear at once.
    times = [m["received"] for m in shown]
    assert len(shown) >= 5
    assert times[-1] - times[0] > 0.8
    text = ex.markdown()
    assert text.strip(), "no markdown output"
    # The heading streams first; the reply's outputs end as static Markdown holding all of it.
    firsts = [m["content"]["data"]["text/markdown"] for m in ex.of_type("display_data")]
    assert firsts and firsts[0].startswith("# "), firsts
    expected = reply_text([{"role": "user", "content": "Hello there [[chunks:80]]"}], chunk_size=server.config.chunk_size)
    assert ex.shows(expected)
    assert len(expected) == 80 * server.config.chunk_size
    words = expected.split()
    assert words[0] in text and words[-1].strip("`*") in text
    # A footer with timings closes the reply.
    assert "first chunk" in text
    assert ex.error is None


def test_history_threads_and_reset(kernel, server):
    kernel.run("%%opchat\nfirst")
    ex = kernel.run("%%opchat\nsecond")
    assert ex.shows(reply_text(user("first", "second")))
    other = kernel.run("%%opchat -t other\nelsewhere")
    assert other.shows(reply_text(user("elsewhere")))
    threads = kernel.run("%opchat_threads").markdown()
    assert "default" in threads and "other" in threads
    kernel.run("%opchat_reset")
    again = kernel.run("%%opchat\nafresh")
    assert again.shows(reply_text(user("afresh")))


def test_reply_lands_in_underscore_and_output_variable(kernel):
    kernel.run("topic = 'bread'")
    kernel.run("%%opchat -o answer\nTell me about {topic} and {{braces}}")
    expected = reply_text(user("Tell me about bread and {braces}"))
    assert kernel.value("answer") == expected
    assert kernel.value("_") == expected
    # The reply is rendered, not echoed again as Out[n].
    ex = kernel.run("%%opchat\nagain")
    assert not ex.of_type("execute_result")


def test_usage_errors_send_nothing(kernel, server):
    before = server.stats.requests.get("submit", 0)
    cases = {
        "%%opchat\n   ": "empty",
        "%%opchat --bogus\nhi": "unrecognized",
        "%%opchat\nvalue of {nope}": "nope",
        "%%opchat -p nosuchprovider\nhi": "nosuchprovider",
        "%opchat_reset nosuchthread": "nosuchthread",
    }
    for code, word in cases.items():
        ex = kernel.run(code, check=False)
        assert ex.status == "error", code
        assert ex.error["ename"] == "UsageError", (code, ex.error)
        assert word.lower() in (ex.error["evalue"] + "".join(ex.error["traceback"])).lower(), (code, ex.error)
    assert server.stats.requests.get("submit", 0) == before


def test_server_error_is_shown_plainly_and_kept_out_of_history(kernel, server):
    kernel.run("%%opchat\nkept")
    server.set_fault("http_500", count=1)
    ex = kernel.run("%%opchat\nthis one fails", check=False)
    assert ex.status == "error"
    assert ex.error["ename"] == "HTTPStatusError"
    traceback = "\n".join(ex.error["traceback"])
    assert "File " not in traceback and "aiohttp" not in traceback  # one sentence, no stack
    assert "%opchat_retry" in traceback
    # The failed turn is retried with one magic and then enters history once.
    retry = kernel.run("%opchat_retry")
    assert retry.shows(reply_text(user("kept", "this one fails")))
    nxt = kernel.run("%%opchat\nafter")
    assert nxt.shows(reply_text(user("kept", "this one fails", "after")))


@pytest.fixture
def restore_url(kernel, server):
    yield
    kernel.run(f"%config OpchatMagics.url = {server.url!r}")


def test_unreachable_endpoint_says_how_to_fix_it(kernel, restore_url):
    port = free_port()
    kernel.run(f"%config OpchatMagics.url = 'http://127.0.0.1:{port}'")
    ex = kernel.run("%%opchat\nanyone there?", check=False, timeout=30)
    assert ex.status == "error"
    shown = ex.markdown() + "\n".join(ex.error["traceback"])
    assert f"127.0.0.1:{port}" in shown
    assert "opchat-magic serve" in shown
    assert "File " not in "\n".join(ex.error["traceback"])


def test_interrupt_closes_the_connection_and_keeps_the_kernel(kernel, server):
    kernel.run("%%opchat\nbefore")
    disconnects = server.stats.disconnects
    execution = kernel.submit("%%opchat\nlong one [[chunks:400]] [[delay:0.05]]")
    seen = []
    interrupted_at = []

    def on_message(msg):
        seen.append(msg)
        if len(seen) == 3 and not interrupted_at:
            interrupted_at.append(time.monotonic())
            kernel.interrupt()

    kernel.collect(execution, timeout=60, on_message=on_message)
    assert interrupted_at, "the reply never started"
    assert execution.status == "error"
    assert execution.error["ename"] == "StoppedError"
    # The partial reply stays visible, marked as stopped.
    assert "stopped" in execution.markdown().lower()
    # The server saw the connection close within a second of the interrupt.
    stats = server.wait_for(lambda st: st.disconnects > disconnects, timeout=3)
    assert stats.disconnects == disconnects + 1
    assert stats.disconnect_events[-1]["at"] - interrupted_at[0] < 1.0
    # The kernel is usable and the stopped turn is not in the history sent next.
    ex = kernel.run("%%opchat\nafter")
    assert ex.shows(reply_text(user("before", "after")))


def test_hostile_reply_is_escaped(kernel):
    ex = kernel.run("%%opchat\nshow me [[html]]")
    md = ex.markdown()
    assert "<img" not in md and "<script" not in md
    # No link may lead to a script; the sanitiser turns such a target into a dead fragment.
    assert not re.search(r"\]\(\s*(javascript|vbscript|data):", md, re.I)
    assert "Normal **Markdown** still renders" in md


def test_code_format_puts_code_in_next_cell(kernel):
    ex = kernel.run("%%opchat -f code\nwrite code [[words:300]]")
    payload = ex.reply["content"].get("payload", [])
    texts = [p.get("text", "") for p in payload if p.get("source") == "set_next_input"]
    assert texts and texts[0].startswith("def "), payload


def test_history_survives_kernel_restart(kernel, server):
    kernel.run("%%opchat\nremember me")
    kernel.restart()
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}")
    ex = kernel.run("%%opchat\ndo you?")
    assert ex.shows(reply_text(user("remember me", "do you?")))


def test_openai_compatible_provider_per_cell(kernel, server):
    before = server.stats.requests.get("chat_completions", 0)
    ex = kernel.run("%%opchat -p openai\nhello over /v1")
    assert ex.shows(reply_text(user("hello over /v1")))
    assert "*openai · " in ex.markdown()  # the footer names the provider as registered
    assert server.stats.requests.get("chat_completions", 0) == before + 1
    # The same thread continues on the default provider, with the history.
    ex = kernel.run("%%opchat\nand back")
    assert ex.shows(reply_text(user("hello over /v1", "and back")))


def test_failover_answers_when_the_first_endpoint_is_down(kernel, server, restore_url):
    port = free_port()
    kernel.run(f"%config OpchatMagics.url = 'http://127.0.0.1:{port}'\n"
               "%config OpchatMagics.failover = ['openai']")
    try:
        ex = kernel.run("%%opchat\nis anyone up?", timeout=60)
    finally:
        kernel.run("%config OpchatMagics.failover = []")
    assert ex.shows(reply_text(user("is anyone up?")))
    assert "*openai · " in ex.markdown()  # the fallback answered (the footer names it)


def test_help_documents_every_flag(kernel):
    ex = kernel.run("%%opchat?\n")
    pages = [p for p in ex.reply["content"].get("payload", []) if p.get("source") == "page"]
    text = pages[0]["data"]["text/plain"] if pages else ex.stdout
    for flag in ("--thread", "--model", "--provider", "--system", "--format", "--output", "--no-history"):
        assert flag in text, flag


def test_export_and_providers(kernel, tmp_path):
    kernel.run("%%opchat\nexport me")
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    kernel.run(f"%opchat_history --export {md}\n%opchat_history --export '{js}'")
    assert "export me" in md.read_text()
    import json

    data = json.loads(js.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["content"] == reply_text(user("export me"))
    table = kernel.run("%opchat providers").markdown()
    for name in ("opchatgpts", "openai", "ollama"):
        assert name in table


def test_traits_come_from_ipython_config(server, tmp_path):
    ipython_dir = tmp_path / "ipython"
    profile = ipython_dir / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(
        f"c.OpchatMagics.url = {server.url!r}\nc.OpchatMagics.thread = 'from-config'\n"
        "c.OpchatMagics.footer = False\n")
    with Kernel(env={"IPYTHONDIR": str(ipython_dir)}) as k:
        k.run("%load_ext opchat_magic")
        ex = k.run("%%opchat\nconfigured?")
        assert ex.shows(reply_text(user("configured?")))
        assert "first chunk" not in ex.markdown()  # footer off
        # The cell went to the configured thread, not to "default".
        threads = k.value("{n: len(get_ipython().magics_manager.registry['OpchatMagics']"
                          ".conversation.thread(n).messages) for n in "
                          "get_ipython().magics_manager.registry['OpchatMagics'].conversation.threads()}")
        assert threads.get("from-config") == 2 and threads.get("default", 0) == 0
