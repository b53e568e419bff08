"""The notebook as context, in a real ipykernel against the local server: what reaches the wire.

{In}/{Out}/{Err} references, %opchat_explain, one-line chat (a `?` question
reaches the model), bounded values and DataFrame summaries, images sent as
content parts and kept in history by reference, and the panel's same paths.
Every assertion on what was sent reads the server's request log.
"""
from __future__ import annotations

import base64
import json
import sqlite3
import time

import pytest

from opchat_magic.server import LocalServer, reply_text
from test_images import png
from test_openai_magic_kernel import wait_for

pytestmark = pytest.mark.kernel
ANSI = "\x1b["


@pytest.fixture(scope="module")
def server():
    with LocalServer(delay=0.002) as srv:
        yield srv


@pytest.fixture(scope="module")
def kernel(server, kernel_on):
    return kernel_on(server, "context.ipynb",
                     env={"OPCHAT_BASE_URL": server.openai_base_url, "OPCHAT_MODEL": "opchat-local",
                          "MPLBACKEND": "Agg"},
                     setup="from IPython import get_ipython\n"
                           "session = get_ipython().magics_manager.registry['OpchatMagics'].session")


@pytest.fixture(autouse=True)
def fresh(kernel, server):
    server.clear_fault()
    kernel.run("%opchat_reset --all")
    yield


def count(ex) -> int:
    return ex.reply["content"]["execution_count"]


def sent(server):
    """The last request's new user message text (AI Engine newMessage, or the OpenAI last message)."""
    body = server.stats.last_body
    if "newMessage" in body:
        return body["newMessage"]
    return body["messages"][-1]["content"]


def requests(server) -> int:
    return sum(server.stats.requests.get(k, 0) for k in ("submit", "chat_completions"))


def test_references_reach_the_wire(kernel, server):
    n1 = count(kernel.run("a = 21"))
    n2 = count(kernel.run("a * 2"))
    n3 = count(kernel.run("int('x')", check=False))
    ex = kernel.run(f"%%opchat\nsrc={{In[{n2}]}} out={{Out[{n2}]}} var={{a}} prev={{In[-1]}} {{{{lit}}}}\n{{Err[{n3}]}}")
    text = sent(server)
    assert text.startswith(f"src=a * 2 out=42 var=21 prev=int('x') {{lit}}\n"
                           "ValueError: invalid literal for int() with base 10: 'x'\n\n")
    assert f"Cell In[{n3}], line 1" in text and ANSI not in text
    assert ex.shows(reply_text([{"role": "user", "content": text}]).split("\n")[0])
    # {Err} is the last error; In[1] exists even though it was typed before this test's cells.
    kernel.run("%%opchat -t other\n{Err}")
    assert sent(server).startswith("ValueError: invalid literal") and n1 >= 1


@pytest.mark.parametrize("cell,words", [
    ("%%opchat\n{Out[9999]}", "cell 9999 has no output"),
    ("%%opchat\n{In[9999]}", "has not run yet"),
    ("%%opchat\n{Err[1]}", "raised no error"),
    ("%%opchat\n{x.real}", "neither a variable name nor a cell reference"),
    ("%%opchat\n{Out}", "needs a cell number"),
    ("%%opchat --image /nonexistent.png\nlook", "no such file"),
    ("%opchat Why {nope}?", "names no variable"),
])
def test_bad_reference_is_a_usage_error_and_nothing_is_sent(kernel, server, cell, words):
    before = requests(server)
    ex = kernel.run(cell, check=False)
    assert ex.status == "error" and ex.error["ename"] == "UsageError", ex.error
    assert words in ex.error["evalue"] and "Nothing was sent" in ex.error["evalue"], ex.error
    assert requests(server) == before
    # Nothing entered the thread either: no failed turn to retry.
    assert kernel.value("session.thread().last_failed is None and session.thread().messages == []")


def test_explain_last_error_streams_and_joins_the_thread(kernel, server):
    n = count(kernel.run("def area(r):\n    return 3.14 * r ** 2\narea('2')", check=False))
    # AI Engine refuses messages over 512 characters by default (textInputMaxLength): a vision-free
    # OpenAI-compatible server takes the long explain request.
    ex = kernel.run("%opchat_explain -p openai")
    text = sent(server)
    assert text.startswith("Explain the error this cell of my Jupyter notebook raised")
    assert f"Cell In[{n}]:\n```python\ndef area(r):\n    return 3.14 * r ** 2\narea('2')\n```" in text
    assert "Error: TypeError: unsupported operand type(s) for ** or pow(): 'str' and 'int'" in text
    assert "Traceback:" in text and "----> 3 area('2')" in text and ANSI not in text
    assert ex.shows("Explain the error this cell")  # the echo streamed into the cell
    assert kernel.value("[m['role'] for m in (x.to_dict() for x in session.thread().messages)]") == \
        ["user", "assistant"]
    # An earlier cell's error by number, and counted back; the thread goes on.
    m = count(kernel.run("[][1]", check=False))
    kernel.run(f"%opchat_explain -p openai {n}")
    assert f"Cell In[{n}]" in sent(server)
    ex = kernel.run("%opchat_explain -1", check=False)  # the cell before is the explain above: no error
    assert ex.status == "error" and "raised no error" in ex.error["evalue"], ex.error
    k = count(kernel.run("{}['missing']", check=False))
    kernel.run("%opchat_explain -p openai -1")  # counted back from this cell: the KeyError just above
    assert f"Cell In[{k}]" in sent(server) and "KeyError" in sent(server)
    ex = kernel.run(f"x = 1\n%opchat_explain -t other -p openai {m}")
    assert "IndexError: list index out of range" in sent(server)
    assert len(server.stats.last_body["messages"]) == 1  # thread "other" was empty


def test_explain_fits_ai_engines_message_limit(kernel, server):
    n = count(kernel.run("def area(r):\n    return 3.14 * r ** 2\narea('2')", check=False))
    ex = kernel.run("%opchat_explain")  # the default provider: AI Engine, 512 characters a message
    text = sent(server)
    assert len(text) <= 512 and text.startswith("Explain this Jupyter error and how to fix it.")
    assert f"Cell In[{n}]:" in text and "area('2')" in text
    assert "Error: TypeError: unsupported operand type(s) for ** or pow(): 'str' and 'int'" in text
    assert "input cut:" in ex.markdown().replace("\\", "")


def test_explain_with_no_error_says_so(kernel, server):
    kernel.run("%opchat_reset")
    before = requests(server)
    ex = kernel.run("%opchat_explain 1", check=False)
    assert ex.error["ename"] == "UsageError" and "raised no error" in ex.error["evalue"]
    assert requests(server) == before


def test_one_line_question_reaches_the_model(kernel, server):
    ex = kernel.run("%opchat What is a monad?")
    assert sent(server) == "What is a monad?"
    assert ex.shows("Echo: What is a monad?") and "not found" not in ex.stdout
    kernel.run("topic = 'functors'")
    kernel.run("%opchat -t maths -s 'Be terse.' And {topic}?")
    body = server.stats.last_body
    assert body["newMessage"] == "And functors?" and body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert kernel.value("[m.content for m in session.thread('maths').messages][0]") == "And functors?"
    # The reply lands in _ as with a cell, and the default thread kept the first question.
    assert kernel.value("session.thread().messages[0].content") == "What is a monad?"
    before = requests(server)
    for word in ("providers", "config", "help"):
        out = kernel.run(f"%opchat {word}")
        assert out.markdown().strip(), word
    kernel.run("%opchat models", check=False)  # AI Engine lists none: it says so, and chats about nothing
    kernel.run("%opchat models openai")
    assert requests(server) == before and server.stats.requests.get("models", 0) >= 1
    ex = kernel.run("%opchat -p openai models")  # a flag then a word: a message, not the command
    assert sent(server) == "models"
    kernel.run("%opchat -p openai -m tiny-vision --image /dev/null x?", check=False)  # refused: not an image
    kernel.run("%opchat -p openai -m tiny-vision Which model?")
    assert server.stats.last_body["model"] == "tiny-vision" and sent(server) == "Which model?"


def test_long_value_is_cut_and_the_footer_says_so(kernel, server):
    kernel.run("big = 'x' * 5000\n%config OpchatMagics.max_value_chars = 1000")
    try:
        ex = kernel.run("%%opchat -p openai\nsee {big}")
    finally:
        kernel.run("%config OpchatMagics.max_value_chars = 100000")
    text = sent(server)
    assert "[... 4,000 of 5,000 characters of big left out here ...]" in text
    assert text.count("x") == 1000 + text.count("x", text.index("["), text.index("]"))  # only marker x's extra
    footer = ex.markdown().replace("\\", "").splitlines()[-1]
    assert footer.endswith("· input cut: 4,000 of 5,000 characters of big left out*"), footer


def test_dataframe_is_summarised(kernel, server):
    kernel.run("import pandas as pd\ndf = pd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'pop': [0.7, 10.0, 7.4]})")
    kernel.run("%%opchat\n{df}")
    text = sent(server)
    assert text.startswith("pandas DataFrame: 3 rows × 2 columns\nColumns (name: dtype):\n- city: ")
    assert "- pop: float64" in text and "First 3 rows:" in text and "Lima" in text


# -- images ---------------------------------------------------------------------------------------

def image_parts(content):
    assert isinstance(content, list), content
    return [base64.b64decode(p["image_url"]["url"].split(",", 1)[1]) for p in content if p["type"] == "image_url"]


def test_image_file_and_figure_output_go_as_content_parts(kernel, server, tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(png())
    ex = kernel.run(f"%%opchat -p openai --image {path}\nWhat is in this image?")
    content = sent(server)
    assert content[0] == {"type": "text", "text": "What is in this image?"}
    assert image_parts(content) == [png()]
    assert ex.shows("The last message carries 1 image: image/png.")
    n = count(kernel.run("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 4, 9])\nfig"))
    kernel.run(f"%%opchat -p openai\nDescribe {{Out[{n}]}}")
    body = server.stats.last_body
    content = body["messages"][-1]["content"]
    assert content[0]["text"] == f"Describe [image: Out[{n}]]"
    (figure,) = image_parts(content)
    assert figure.startswith(b"\x89PNG")
    # History keeps the earlier image and sends it again with the next turn (bytes from the blob store).
    assert image_parts(body["messages"][0]["content"]) == [png()]
    # An IPython Image output too, in the one-line form.
    m = count(kernel.run(f"from IPython.display import Image\nImage(filename={str(path)!r})"))
    kernel.run(f"%opchat -p openai Compare {{Out[{m}]}}?")
    assert image_parts(sent(server)) == [png()]


def test_history_stores_a_reference_and_a_restart_finds_the_image(kernel, server, tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(png(3, 3))
    kernel.run(f"%%opchat -p openai --image {path}\nremember this")
    kernel.run("session.conversation.flush(5)")
    db = kernel.value("session.conversation.store.path")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT content, images FROM messages WHERE role='user' AND content LIKE 'remember this%'")\
            .fetchall()
        blobs = conn.execute("SELECT sha256, mime, length(data) FROM blobs").fetchall()
    (content, images), = rows
    ref = json.loads(images)[0]
    assert "base64" not in content and ref["mime"] == "image/png" and ref["source"] == "dot.png"
    assert (ref["sha256"], "image/png", len(png(3, 3))) in blobs
    kernel.restart()
    kernel.run(f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}\n"
               "from IPython import get_ipython\n"
               "session = get_ipython().magics_manager.registry['OpchatMagics'].session")
    kernel.run("%%opchat -p openai\nand now?")
    first = server.stats.last_body["messages"][0]
    assert image_parts(first["content"]) == [png(3, 3)]


def test_text_only_provider_refuses_images_before_sending(kernel, server, tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(png())
    before = requests(server)
    ex = kernel.run(f"%%opchat --image {path}\nlook", check=False)
    assert ex.error["ename"] == "UsageError"
    assert "AI Engine's chat endpoint (provider opchatgpts) takes text only" in ex.error["evalue"]
    assert requests(server) == before
    assert kernel.value("session.thread().last_failed is None")


# -- the panel: the same references, and "Explain last error" -------------------------------------

def test_panel_resolves_references_and_explains_the_last_error(kernel, server):
    kernel.run("from opchat_magic.panel import ChatPanel\npanel = ChatPanel()")
    # "Explain last error" is offered exactly when a cell has raised one (earlier tests in this kernel may have).
    assert kernel.value("panel.explain_button.disabled == (not session.has_error)") is True
    n = count(kernel.run("'abc'.upper()"))
    kernel.run(f"panel.input.value = 'Why {{Out[{n}]}}?'\npanel.send()")
    wait_for(kernel, "not panel.busy")
    assert sent(server) == "Why ABC?"
    # A bad field: the status line says why, nothing is sent, the input keeps the text.
    before = requests(server)
    kernel.run("panel.input.value = 'see {Out[9999]}'\npanel.send()")
    assert "cell 9999 has no output" in kernel.value("panel.status_text")
    assert kernel.value("panel.input.value") == "see {Out[9999]}" and requests(server) == before
    e = count(kernel.run("{}['missing']", check=False))
    kernel.run("panel.provider_select.value = 'openai'")
    assert kernel.value("panel.explain_button.disabled") is False
    kernel.run("panel.explain()")
    wait_for(kernel, "not panel.busy")
    text = sent(server)
    assert text.startswith("Explain the error") and f"Cell In[{e}]" in text and "KeyError: 'missing'" in text
    assert "Explain the error" in kernel.value("panel.transcript_markdown()")
    kernel.run("panel.close()")


def test_interrupting_a_one_line_question_closes_the_connection(kernel, server):
    """The one-line form runs as an awaited task in ipykernel, like a %%opchat cell."""
    disconnects = server.stats.disconnects
    execution = kernel.submit("%opchat long one? [[chunks:400]] [[delay:0.05]]")
    seen, interrupted_at = [], []

    def on_message(msg):
        seen.append(msg)
        if len(seen) == 3 and not interrupted_at:
            interrupted_at.append(time.monotonic())
            kernel.interrupt()

    kernel.collect(execution, timeout=60, on_message=on_message)
    assert interrupted_at and execution.error["ename"] == "StoppedError", execution.error
    stats = server.wait_for(lambda st: st.disconnects > disconnects, timeout=3)
    assert stats.disconnect_events[-1]["at"] - interrupted_at[0] < 1.0
    assert kernel.value("session.thread().last_failed.status") == "stopped"
