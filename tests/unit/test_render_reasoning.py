"""The renderer's reasoning part: apart from the answer, before it, secondary, inert, linear."""
from __future__ import annotations

import io
import json

import pytest

from opchat_magic.render import DisplayFace, Renderer, TerminalFace, WidgetFace
from opchat_magic.render.reasoning import THINKING, reasoning_markdown, reasoning_plain, thought_summary
from opchat_magic.testing.kernel import Kernel, message_bytes

HOSTILE = 'Let me think. <img src=x onerror="window.__pwned=1"> [click](javascript:alert(1)) **bold** \x1b[31mred\x1b[0m'


class Recorder:
    """A face that records every call."""

    streams_raw = False

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_reasoning_comes_first_open_then_collapsed_when_the_answer_starts():
    face, clock = Recorder(), Clock()
    r = Renderer(face, clock=clock)
    r.feed_reasoning("First I ")
    clock.t += 1
    r.feed_reasoning("consider.")
    r.feed("The answer.")
    r.finish("footer")
    names = [c[0] for c in face.calls]
    first_answer = next(i for i, n in enumerate(names) if n in ("add_block", "set_tail"))
    reasoning = [c for c in face.calls if c[0] == "set_reasoning"]
    # streaming states: open <details>, Markdown only; the last one: collapsed, with plain text, before the answer
    assert reasoning[0][1].startswith("<details open><summary>" + THINKING) and reasoning[0][2] is None
    assert reasoning[1][1].startswith("<details open>") and "consider\\." in reasoning[1][1]
    final = reasoning[-1]
    assert final[3] is True and final[1].startswith("<details><summary>Thought · 17 characters</summary>")
    assert final[2] == reasoning_plain("First I consider.")
    assert names.index("set_reasoning") < first_answer and len(reasoning) == 3
    assert names[first_answer - 1] == "set_reasoning"  # closed before the answer's first output
    assert r.text == "The answer." and r.reasoning.text == "First I consider."


def test_reasoning_alone_is_closed_by_finish_and_by_fail():
    for end in ("finish", "fail"):
        face = Recorder()
        r = Renderer(face, clock=Clock())
        r.feed_reasoning("only thinking")
        getattr(r, end)("x")
        finals = [c for c in face.calls if c[0] == "set_reasoning" and c[3]]
        assert len(finals) == 1 and "only thinking" in finals[0][1]


def test_no_reasoning_no_reasoning_output():
    face = Recorder()
    r = Renderer(face, clock=Clock())
    r.feed("answer")
    r.finish()
    assert not any(c[0] == "set_reasoning" for c in face.calls)


def test_hostile_reasoning_is_inert_text():
    for final in (False, True):
        md = reasoning_markdown(HOSTILE, final=final)
        body = md.split("</summary>", 1)[1]
        assert "<img" not in body and "&lt;img" in body
        assert "](javascript" not in body and "\\]\\(javascript" in body
        assert "\\*\\*bold\\*\\*" in body and "\x1b" not in body
    assert "\x1b" not in reasoning_plain(HOSTILE)
    # Bidi overrides and escapes in the plain form are shown, not obeyed (as in every terminal text).
    plain = reasoning_plain("safe \u202e evil \x1b]52;c;AAAA\x07 end")
    assert "\u202e" not in plain and "\x1b" not in plain and "\x07" not in plain
    assert "\\x1b]52" in plain and "end" in plain


def test_paragraphs_stay_apart_as_quote_lines():
    md = reasoning_markdown("one\n\ntwo", final=True)
    assert "> one\n>\n> two" in md


def test_streaming_updates_show_a_bounded_window():
    face, clock = Recorder(), Clock()
    r = Renderer(face, clock=clock)
    for _ in range(2000):
        r.feed_reasoning("word ")
        clock.t += 0.01
        r.tick()
    sizes = [len(c[1]) for c in face.calls if c[0] == "set_reasoning"]
    assert max(sizes) < 1500 and len(sizes) > 5



def test_streaming_window_is_the_end_of_the_whole_text():
    # each update shows the text's last `window` characters, read without joining the rest
    face, clock = Recorder(), Clock()
    r = Renderer(face, clock=clock)
    fed = []
    for i in range(600):
        fed.append(f"step {i}. ")
        r.feed_reasoning(fed[-1])
        clock.t += 0.01
        r.tick()
    clock.t += 1.0
    r.tick()  # flush: the last update shows the text as it ends
    updates = [c[1] for c in face.calls if c[0] == "set_reasoning"]
    assert updates[-1] == reasoning_markdown("".join(fed), final=False, window=r.reasoning.window)
    assert r.reasoning._chunks.last(5) == "".join(fed)[-5:]
    assert r.reasoning.text == "".join(fed)

def _reasoning_bytes(n_chunks):
    face, clock = Recorder(), Clock()
    r = Renderer(face, clock=clock)
    for i in range(n_chunks):
        r.feed_reasoning(f"step {i} of the plan. ")
        clock.t += 0.002
        r.tick()
    r.feed("done")
    r.finish()
    return r.reasoning.bytes_sent, r.reasoning.chars, r.reasoning.updates


def test_reasoning_cost_is_linear():
    b1, c1, u1 = _reasoning_bytes(2_000)
    b5, c5, u5 = _reasoning_bytes(10_000)
    assert 4 <= b5 / b1 <= 6.5, (b1, b5)  # 5x the reasoning: ~5x the bytes, not ~25x
    assert b5 / c5 < 4.5  # streaming windows (~budget) + the final copy
    assert u5 / u1 <= 6.5


def test_display_face_uses_its_own_handle():
    shown, updated = [], []
    face = DisplayFace(display=lambda data, **kw: shown.append((data, kw)),
                       update_display=lambda data, **kw: updated.append((data, kw)))
    r = Renderer(face, clock=Clock())
    r.feed_reasoning("hmm")
    r.feed("Answer")
    r.finish()
    reasoning_id = shown[0][1]["display_id"]
    assert reasoning_id.startswith("opchat-thinking-") and set(shown[0][0]) == {"text/markdown"}
    assert updated[0][1]["display_id"] == reasoning_id and updated[0][0]["text/plain"] == reasoning_plain("hmm")
    assert updated[0][0]["text/markdown"].startswith("<details><summary>")
    assert any("Answer" in d.get("text/markdown", "") for d, _ in shown[1:])


def test_widget_face_reasoning_output_first():
    face = WidgetFace()
    r = Renderer(face, clock=Clock())
    r.feed_reasoning("thinking hard")
    r.feed("# Answer\n\ntext\n\n")
    r.finish("f")
    outs = face.outputs
    first = outs[0].outputs[0]["data"]
    assert first["text/markdown"].startswith("<details><summary>" + thought_summary("thinking hard"))
    assert "thinking hard" in first["text/plain"]
    assert all("thinking hard" not in o.outputs[0]["data"]["text/markdown"] for o in outs[1:])


@pytest.mark.parametrize("tty", [False, True])
def test_terminal_face_labels_and_dims(tty):
    class Stream(io.StringIO):
        def isatty(self):
            return tty

    out = Stream()
    r = Renderer(TerminalFace(out))
    r.feed_reasoning("plan \x1b[31mA")
    r.feed_reasoning(" then B")
    r.feed("Answer.")
    r.finish("footer")
    text = out.getvalue()
    visible = text.replace("\x1b[2m", "").replace("\x1b[0m", "")
    assert visible == "[thinking] plan \\x1b[31mA then B\n[/thinking]\nAnswer.\nfooter\n"  # visible, inert
    assert ("\x1b[2m" in text and "\x1b[0m" in text) == tty
    assert "\x1b[31m" not in text


DRIVE = """
from opchat_magic.render import Renderer, DisplayFace
t = [0.0]
r = Renderer(DisplayFace(), clock=lambda: t[0])
for i in range({n}):
    r.feed_reasoning("step %d <img src=x onerror=alert(1)>. " % i)
    t[0] += 0.003
    r.tick()
for i in range(40):
    r.feed("answer %d " % i)
    t[0] += 0.003
    r.tick()
r.finish("footer")
"""


@pytest.mark.kernel
def test_in_a_real_kernel_reasoning_is_one_collapsed_output_before_the_answer():
    with Kernel() as kernel:
        sizes = {}
        for n in (300, 1500):
            ex = kernel.run(DRIVE.format(n=n), timeout=120)
            outputs = ex.final_outputs()
            first = outputs[0]["data"]
            assert first["text/markdown"].startswith("<details><summary>Thought · ")
            assert "step 0 " in first["text/markdown"] and f"step {n - 1} " in first["text/markdown"]
            assert "<img" not in first["text/markdown"].split("</summary>", 1)[1]
            assert all("step " not in o["data"].get("text/markdown", "") for o in outputs[1:])
            assert "answer 39" in ex.markdown()
            reasoning_msgs = [m for m in ex.of_type("display_data", "update_display_data")
                              if m["content"].get("transient", {}).get("display_id", "").startswith("opchat-thinking-")]
            sizes[n] = sum(message_bytes(m) for m in reasoning_msgs)
            assert json.dumps(first)  # plain JSON, saved as is
        assert sizes[1500] / sizes[300] < 6.5, sizes  # 5x the reasoning, ~5x the bytes
