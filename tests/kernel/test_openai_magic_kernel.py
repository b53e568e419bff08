"""OpenAI-compatible servers as they really behave, through the magic and the panel in a real kernel.

Each real-server behaviour (a bare ``[DONE]`` cutting the reply, an empty 200,
reasoning deltas, a stream without usage) is played by the local server's
fault injection over 127.0.0.1, and checked where the user meets it: the
cell's output, the panel's transcript and status, and the history sent with
the next request (read from the server's own record of what it received).
"""
from __future__ import annotations

import re
import time

import pytest

from opchat_magic.server import LocalServer, reply_text
from opchat_magic.server.faults import reasoning_text

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0.005, extra_models=("opchat-reasoner",)) as srv:
        yield srv


@pytest.fixture(scope="module")
def kernel(server, kernel_on):
    return kernel_on(server, "openai.ipynb", setup=(
        "%config OpchatMagics.provider = 'openai'\n"
        f"%config OpchatMagics.url = {server.openai_base_url!r}\n"
        "%config OpchatMagics.model = 'opchat-local'\n"
        "from opchat_magic.panel import ChatPanel\n"
        "panels = []\n"
        "def new_panel(**kw):\n"
        "    p = ChatPanel(**kw); panels.append(p); return p\n"))


@pytest.fixture(autouse=True)
def fresh(kernel, server):
    server.clear_fault()
    kernel.run("for _p in panels: _p.close()\npanels.clear()\n%opchat_reset --all")
    yield


def sent(server):
    """The messages of the last chat request the server received."""
    return server.stats.last_body["messages"]


def flat(text):
    return " ".join(text.split())


def unescaped(md):
    """Markdown as read: the backslash escapes of plain text (footer, model ids) removed."""
    return re.sub(r"\\(.)", r"\1", md)


def wait_for(kernel, expression, timeout=30.0):
    """Poll ``expression`` in the kernel until it is truthy; return its value (shared by the kernel tests)."""
    deadline = time.monotonic() + timeout
    while True:
        value = kernel.value(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{expression!r} still falsy after {timeout} s")
        time.sleep(0.05)


# ------------------------------------------------------------------- the cell


def test_cell_text_is_sent_without_its_trailing_newline_and_blank_lines(kernel, server):
    ex = kernel.run("%%opchat\nName one fruit.\n\n   \n")
    assert ex.error is None
    assert sent(server)[-1] == {"role": "user", "content": "Name one fruit."}
    kernel.run("%%opchat\n  indented first line\nsecond line  \n")
    assert sent(server)[-1]["content"] == "  indented first line\nsecond line  "


def test_cut_off_reply_is_kept_as_a_retryable_partial_turn(kernel, server):
    ex = kernel.run("%%opchat\nTell me a story [[fault:bare_done]]", check=False)
    partial = reply_text([{"role": "user", "content": "Tell me a story [[fault:bare_done]]"}])
    assert ex.error is not None and ex.error["ename"] == "TruncatedStreamError"
    shown = flat(ex.markdown() + " " + "\n".join(ex.error["traceback"]))
    assert flat(partial)[:30] in flat(ex.markdown())  # what arrived stays visible
    assert "cut the reply off" in shown and "%opchat_retry" in shown
    # out of the history sent next
    kernel.run("%%opchat\nNext question")
    assert [m["content"] for m in sent(server)] == ["Next question"]
    # and retryable: the retry is sent with the history before it
    server.set_fault("bare_done", count=1)  # this request only: the retry gets a whole reply
    kernel.run("%%opchat\nFirst", check=False)
    ex = kernel.run("%opchat_retry")
    assert ex.error is None
    assert [m["content"] for m in sent(server)] == ["Next question", reply_text([{"role": "user", "content": "Next question"}]), "First"]
    assert kernel.value("[t.status for t in get_ipython().magics_manager.registry['OpchatMagics']"
                        ".session.thread('default').turns]")[-1] == "complete"


def test_empty_200_explains_the_context_and_how_to_trim(kernel, server):
    ex = kernel.run("%%opchat\nA very long prompt [[fault:empty_body]]", check=False)
    assert ex.error is not None and ex.error["ename"] == "EmptyReplyError"
    text = "\n".join(ex.error["traceback"]) + ex.markdown()
    assert "context window" in text and "1 message," in text and "max_history" in text and "%opchat_reset" in text
    assert "Traceback" not in text


def test_reasoning_is_shown_apart_before_the_reply_and_never_sent_back(kernel, server):
    ex = kernel.run("%%opchat\nThink about it [[fault:reasoning]]")
    assert ex.error is None
    messages = [{"role": "user", "content": "Think about it [[fault:reasoning]]"}]
    outputs = [o["data"] for o in ex.final_outputs() if "data" in o]
    thinking = outputs[0]["text/markdown"]
    assert thinking.startswith("<details><summary>Thought · ")  # collapsed, first
    assert outputs[0]["text/plain"].endswith(reasoning_text(reply_text(messages)))
    answer = flat(ex.markdown().split("</details>", 1)[1])
    assert flat(reply_text(messages))[:40] in answer and "The user wants an echo" not in answer
    assert "reasoning\\)" in ex.markdown()  # the footer counts reasoning tokens (escaped Markdown)
    kernel.run("%%opchat\nAnd then?")
    history = sent(server)
    assert history[1] == {"role": "assistant", "content": reply_text(messages)}
    assert "The user wants an echo" not in repr(history)


def test_usage_less_stream_says_so_in_the_footer(kernel, server):
    ex = kernel.run("%%opchat\nhi [[fault:no_usage]]")
    assert ex.error is None and "usage not reported" in ex.markdown()
    ex = kernel.run("%%opchat\nhi again")
    assert "usage not reported" not in ex.markdown() and " in \\/ " in ex.markdown()


def test_footer_names_the_endpoint_and_the_servers_model(kernel, server):
    ex = kernel.run("%%opchat -m opchat-reasoner\nwho answers?")
    footer = unescaped(ex.markdown().splitlines()[-1])
    host = server.openai_base_url.split("://", 1)[1].split("/", 1)[0]
    assert f"openai · opchat-reasoner · {host} · " in footer


def test_models_lists_the_servers_models_marking_the_configured_one(kernel, server):
    ex = kernel.run("%opchat models")
    md = unescaped(ex.markdown())
    assert "offers 2 models" in md
    assert "- opchat-local ← configured" in md and "- opchat-reasoner\n" in md + "\n"
    kernel.run("%config OpchatMagics.model = 'gpt-9'")
    try:
        md = unescaped(kernel.run("%opchat models").markdown())
        assert "← configured" not in md and "gpt-9 is not among them" in md
    finally:
        kernel.run("%config OpchatMagics.model = 'opchat-local'")


def test_models_says_plainly_where_a_protocol_has_no_listing(kernel, server):
    ex = kernel.run("%opchat models opchatgpts")
    assert ex.error is None and "no model listing" in ex.markdown()


def test_models_of_an_unreachable_server_is_a_clear_error(kernel, server):
    kernel.run("%config OpchatMagics.endpoints = {'ollama': 'http://127.0.0.1:9/v1'}")
    ex = kernel.run("%opchat models ollama", check=False)
    assert ex.error is not None
    text = "\n".join(ex.error["traceback"])
    assert "Could not list the models of ollama" in text and "127.0.0.1:9" in text and "Traceback" not in text


def test_dash_p_uses_that_providers_own_configured_endpoint(kernel, server):
    with LocalServer(delay=0, model="other-model") as other:
        kernel.run(f"%config OpchatMagics.endpoints = {{'vllm': {other.openai_base_url!r}}}")
        ex = kernel.run("%%opchat -p vllm\nwhere am I?")
        assert ex.error is None
        assert other.stats.last_body["messages"][-1]["content"] == "where am I?"
        footer = unescaped(ex.markdown().splitlines()[-1])
        host = other.openai_base_url.split("://", 1)[1].split("/", 1)[0]
        assert footer.startswith(f"*vllm · opchat-local · {host} · "), footer  # the model the server says it used


# ------------------------------------------------------------------- the panel


def test_panel_faults(kernel, server):
    kernel.run("panel = new_panel(thread='default')")
    # reasoning: its own output, first, then the answer; the history holds the answer only
    kernel.run("panel.send('Think [[fault:reasoning]]')")
    wait_for(kernel, "not panel.busy")
    shown = kernel.value("panel.transcript_markdown()")
    assert "<details><summary>Thought · " in shown
    assert shown.index("<details><summary>Thought") < shown.index("Echo: Think")
    assert kernel.value("[m.content for m in panel.thread.messages]")[1] == reply_text(
        [{"role": "user", "content": "Think [[fault:reasoning]]"}])
    # usage not reported: said in the reply's footer (the status line says the state, not the footer)
    kernel.run("panel.send('hi [[fault:no_usage]]')")
    wait_for(kernel, "not panel.busy")
    assert "usage not reported" in kernel.value("panel.transcript_markdown()").rsplit("Echo: hi", 1)[1]
    assert "usage not reported" not in kernel.value("panel.status_text")
    # bare [DONE]: failed, partial kept, retry offered, out of the history
    kernel.run("panel.send('story [[fault:bare_done]]')")
    wait_for(kernel, "not panel.busy")
    status = kernel.value("panel.status_text")
    assert "cut the reply off" in status, status
    assert kernel.value("panel.retry_button.layout.display") != "none"
    assert kernel.value("len(panel.thread.messages)") == 4
    # empty 200: the context explanation
    kernel.run("panel.send('long [[fault:empty_body]]')")
    wait_for(kernel, "not panel.busy")
    assert "context window" in kernel.value("panel.status_text")


def test_ai_engine_thinking_events_are_shown_as_reasoning_too(kernel, server):
    kernel.run(f"%config OpchatMagics.endpoints = {{'opchatgpts': {server.url!r}}}")
    ex = kernel.run("%%opchat -p opchatgpts\nPonder [[fault:reasoning]]")
    assert ex.error is None
    outputs = [o["data"] for o in ex.final_outputs() if "data" in o]
    assert outputs[0]["text/markdown"].startswith("<details><summary>Thought · ")
    assert "The user wants an echo" in outputs[0]["text/plain"]
    assert "The user wants an echo" not in "".join(o["text/markdown"] for o in outputs[1:])
    assert server.stats.last_body["newMessage"] == "Ponder [[fault:reasoning]]"
