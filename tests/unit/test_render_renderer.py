"""Renderer (throttle, linear bytes) and its faces, without a kernel."""
from __future__ import annotations

import io
import random

import pytest

from opchat_magic.render import (
    STOPPED,
    BlockSplitter,
    DisplayFace,
    Renderer,
    TerminalFace,
    WidgetFace,
    choose_face,
    sanitize_markdown,
)

# -- a realistic reply ---------------------------------------------------------------
_WORDS = (
    "the a of to and in is it that for on with as this are be by data model kernel value stream "
    "render block list code output function python notebook markdown token reply server client "
    "widget thread loop event error result cell magic history provider"
).split()


def _sentence(r: random.Random) -> str:
    words = [r.choice(_WORDS) for _ in range(r.randint(6, 18))]
    if r.random() < 0.3:
        words[r.randrange(len(words))] = "`" + r.choice(["x < y", "<div>", "len(s)", "a_b", "--flag"]) + "`"
    if r.random() < 0.2:
        words[r.randrange(len(words))] = "**" + r.choice(_WORDS) + "**"
    if r.random() < 0.1:
        words[r.randrange(len(words))] = "[docs](https://example.com/%s)" % r.choice(_WORDS)
    s = " ".join(words)
    return s[0].upper() + s[1:] + "."


def realistic_reply(n: int, seed: int = 0) -> str:
    """A chat reply of ``n`` characters: paragraphs, headings, lists, code, tables, quotes."""
    r = random.Random(seed)
    out, size = [], 0
    while size < n:
        k = r.random()
        if k < 0.4:
            block = " ".join(_sentence(r) for _ in range(r.randint(2, 6))) + "\n\n"
        elif k < 0.5:
            block = "#" * r.randint(1, 3) + " " + _sentence(r)[:-1] + "\n\n"
        elif k < 0.62:
            block = "".join("- " + _sentence(r) + "\n" for _ in range(r.randint(2, 6))) + "\n"
        elif k < 0.72:
            block = "".join("%d. %s\n" % (i + 1, _sentence(r)) for i in range(r.randint(2, 7))) + "\n"
        elif k < 0.88:
            lines = [
                r.choice(["    if x < 10:", "print('<b>%s</b>')" % r.choice(_WORDS), "", "def f(a, b):",
                          "    return a & b", "for i in range(10):", "x = {'k': [1, 2]}", "# comment <tag>"])
                for _ in range(r.randint(3, 25))
            ]
            block = "```" + r.choice(["python", "bash", "", "html"]) + "\n" + "\n".join(lines) + "\n```\n\n"
        elif k < 0.94:
            rows = "".join("| %s | %d |\n" % (r.choice(_WORDS), r.randint(0, 99)) for _ in range(r.randint(2, 8)))
            block = "| name | value |\n|---|---|\n" + rows + "\n"
        else:
            block = "> " + _sentence(r) + "\n> " + _sentence(r) + "\n\n"
        out.append(block)
        size += len(block)
    return "".join(out)[:n]


# -- fakes ---------------------------------------------------------------------------
class CountingFace:
    """Counts calls and bytes; checks the call protocol."""

    def __init__(self):
        self.calls = []  # (time, kind, md)
        self.bytes = 0
        self.closed = False
        self.clock = None

    def _rec(self, kind, md):
        assert not self.closed or kind in ("footer", "error"), "call after close_tail"
        self.calls.append((self.clock() if self.clock else 0.0, kind, md))
        self.bytes += len(md.encode())

    def add_block(self, md):
        self._rec("block", md)

    def set_tail(self, md):
        self._rec("tail", md)

    def close_tail(self):
        self.closed = True

    def footer(self, text):
        self._rec("footer", text)

    def error(self, text):
        self._rec("error", text)


class FakeDisplay:
    """display()/update_display() of IPython, keeping the outputs a frontend would hold."""

    def __init__(self):
        self.outputs = []  # [data dict]
        self.by_id = {}
        self.messages = []  # (kind, data, display_id)

    def display(self, data, raw=False, display_id=None):
        assert raw is True
        self.messages.append(("display", dict(data), display_id))
        self.outputs.append(dict(data))
        if display_id:
            self.by_id[display_id] = len(self.outputs) - 1

    def update(self, data, raw=False, display_id=None):
        assert raw is True and display_id in self.by_id
        self.messages.append(("update", dict(data), display_id))
        self.outputs[self.by_id[display_id]] = dict(data)

    def markdown(self):
        return [o["text/markdown"] for o in self.outputs]


def feed_all(renderer, text, size=5, dt=0.005, clock=None, tick_every=10):
    for k, i in enumerate(range(0, len(text), size)):
        renderer.feed(text[i : i + size])
        if clock is not None:
            clock[0] += dt
        if k % tick_every == 0:
            renderer.tick()


def expected_blocks(text):
    """The reply's blocks as the splitter cuts them (chunking-independent), whitespace ones dropped."""
    sp = BlockSplitter()
    sp.feed(text)
    return [b for b in sp.close() if b.strip()]


# -- throttle --------------------------------------------------------------------------
def test_first_chunk_renders_at_once_then_at_most_once_per_interval():
    t = [100.0]
    face = CountingFace()
    r = Renderer(face, interval=0.05, clock=lambda: t[0], budget=1e9)
    r.feed("Hello")
    assert [c[1:] for c in face.calls] == [("tail", "Hello")]
    t[0] += 0.01
    r.feed(" wor")
    r.tick()
    assert len(face.calls) == 1  # within the interval: only marked dirty
    t[0] += 0.045
    r.tick()
    assert face.calls[-1][1:] == ("tail", "Hello wor")
    r.tick()
    assert len(face.calls) == 2  # nothing new, nothing sent
    t[0] += 1
    r.tick()
    assert len(face.calls) == 2


def test_tick_flushes_after_max_lag_even_without_budget():
    t = [0.0]
    face = CountingFace()
    r = Renderer(face, interval=0.05, clock=lambda: t[0], budget=0.0, max_lag=0.25)
    r.feed("abc")
    t[0] += 0.1
    r.feed("def")
    r.tick()
    assert len(face.calls) == 1  # no budget, lag not reached
    t[0] += 0.2
    r.tick()
    assert face.calls[-1][1:] == ("tail", "abcdef")


def test_completed_blocks_gather_in_the_open_output_until_it_is_full():
    t = [0.0]
    face = CountingFace()
    r = Renderer(face, interval=0.05, clock=lambda: t[0], group_chars=1000)
    r.feed("First paragraph.")
    t[0] += 0.1
    r.feed("\n\nSecond")
    kinds = [(c[1], c[2]) for c in face.calls]
    assert kinds == [("tail", "First paragraph."), ("tail", "First paragraph.\n\nSecond")]
    r.finish("12 tokens")
    assert [(c[1], c[2]) for c in face.calls[2:]] == [("block", "First paragraph.\n\nSecond"), ("footer", "12 tokens")]
    assert (r.blocks, r.blocks_sent, r.tail_updates) == (2, 1, 2)


def test_a_full_output_is_sent_once_and_the_tail_restarts():
    t = [0.0]
    face = CountingFace()
    r = Renderer(face, interval=0.05, clock=lambda: t[0], group_chars=10)
    r.feed("First paragraph.")
    t[0] += 0.1
    r.feed("\n\nSecond")
    kinds = [(c[1], c[2]) for c in face.calls]
    assert kinds == [("tail", "First paragraph."), ("block", "First paragraph.\n\n"), ("tail", "Second")]
    r.finish("12 tokens")
    assert [(c[1], c[2]) for c in face.calls[3:]] == [("block", "Second"), ("footer", "12 tokens")]
    assert r.text == "First paragraph.\n\nSecond"
    assert (r.blocks_sent, r.tail_updates) == (2, 2)


def test_outputs_stay_few_whatever_the_length():
    """JupyterLab / Notebook 7 show 50 outputs per cell: a reply stays well under, 1 M characters included."""
    for n, most in ((2_000, 2), (100_000, 25), (1_000_000, 45)):
        text, face, r, _s = _run(n, seed=8)
        finals = [c for c in face.calls if c[1] == "block"]
        assert len(finals) <= most, (n, len(finals))
        assert "".join(c[2] for c in finals) == "".join(expected_blocks(text))


# -- linear bytes -------------------------------------------------------------------------
def _run(n, seed=1, dt=0.005, **kw):
    text = realistic_reply(n, seed)
    t = [0.0]
    face = CountingFace()
    face.clock = lambda: t[0]
    r = Renderer(face, clock=lambda: t[0], **kw)
    feed_all(r, text, size=5, dt=dt, clock=t)
    r.finish()
    return text, face, r, t[0]


def test_bytes_sent_grow_linearly_with_the_reply():
    text, face, r, seconds = _run(50_000)
    ratio = face.bytes / len(text.encode())
    # measured 6.1 at 1,000 chars/s: budget 1.5 + finals 1 + max-lag re-sends (lag_rate 6,000 chars/s)
    assert ratio <= 9.0, ratio
    text10, face10, _r, _s = _run(500_000)
    growth = face10.bytes / face.bytes
    assert 8 <= growth <= 13, growth  # 10x the reply: ~10x the bytes, not ~100x
    # what a full re-send per update would have cost: quadratic
    full_resend = sum(len(text[: i + 5]) for i in range(0, len(text), 50))
    assert face.bytes * 20 < full_resend


def test_face_calls_per_second_are_bounded_by_interval_plus_blocks():
    text, face, r, seconds = _run(50_000)
    for second in range(int(seconds)):
        calls = [c for c in face.calls if second <= c[0] < second + 1]
        blocks = sum(1 for c in calls if c[1] == "block")
        assert len(calls) <= 1 / r.interval + blocks, (second, len(calls), blocks)


def test_all_blocks_arrive_in_order_and_reproduce_the_reply():
    text, face, r, _s = _run(30_000, seed=3)
    display = FakeDisplay()
    face2 = DisplayFace(display=display.display, update_display=display.update)
    t = [0.0]
    r2 = Renderer(face2, clock=lambda: t[0])
    feed_all(r2, text, size=7, dt=0.004, clock=t)
    r2.finish("⏱ 1 token")
    md = display.markdown()
    assert "".join(md[:-1]) == "".join(sanitize_markdown(b) for b in expected_blocks(text))
    assert "".join(md[:-1]) == "".join(expected_blocks(text))  # a safe reply is sent unchanged
    assert md[-1] == "*⏱ 1 token*"
    assert len(md) <= 10


# -- finish / fail --------------------------------------------------------------------
def test_fail_keeps_the_partial_reply_then_a_clear_marker():
    display = FakeDisplay()
    r = Renderer(DisplayFace(display=display.display, update_display=display.update))
    r.feed("# Answer\n\nPartial text that was cut")
    r.fail("connection reset", stopped=True)
    assert display.markdown()[0] == "# Answer\n\nPartial text that was cut"
    assert "stopped" in display.markdown()[-1] and display.outputs[-1]["text/plain"] == STOPPED
    r.feed("ignored after the end")
    assert r.text.endswith("was cut")

    display = FakeDisplay()
    r = Renderer(DisplayFace(display=display.display, update_display=display.update))
    r.feed("Some text")
    r.fail("HTTP 500: <img src=x onerror=alert(1)>")
    assert display.markdown()[0] == "Some text"
    assert display.outputs[-1]["text/plain"] == "⚠ HTTP 500: <img src=x onerror=alert(1)>"
    assert "<img" not in display.markdown()[-1]


# -- DisplayFace ------------------------------------------------------------------------
def test_display_face_sends_blocks_once_and_updates_only_the_tail():
    display = FakeDisplay()
    face = DisplayFace(display=display.display, update_display=display.update)
    face.set_tail("Hel")
    face.set_tail("Hello")
    face.set_tail("Hello")  # unchanged: nothing sent
    face.add_block("Hello world.\n\n")  # the tail's final state
    face.add_block("# Next\n")  # no tail: displayed directly
    face.set_tail("More")
    face.add_block("More text\n")
    face.close_tail()
    face.footer("⏱ 3 tokens · 0.1 s")
    kinds = [(k, d.get("text/markdown"), bool(i)) for k, d, i in display.messages]
    assert kinds == [
        ("display", "Hel", True), ("update", "Hello", True), ("update", "Hello world.\n\n", True),
        ("display", "# Next\n", False), ("display", "More", True), ("update", "More text\n", True),
        ("display", "*⏱ 3 tokens · 0\\.1 s*", False),
    ]
    # tail states are Markdown only; final outputs carry text/plain too (no object repr anywhere)
    assert all("text/plain" in o for o in display.outputs)
    assert display.messages[1][1] == {"text/markdown": "Hello"}
    ids = {i for _k, _d, i in display.messages if i}
    assert len(ids) == 2


# -- WidgetFace -------------------------------------------------------------------------
def test_widget_face_touches_only_the_tail_output():
    pytest.importorskip("ipywidgets")
    face = WidgetFace(page_size=2)
    changes = {}

    def watch(out):
        out.observe(lambda ch: changes.setdefault(id(out), []).append(ch["new"]), names="outputs")

    t = [0.0]
    r = Renderer(face, interval=0.05, clock=lambda: t[0], group_chars=500)
    text = realistic_reply(12000, seed=2)
    seen = set()
    frozen = {}
    for i in range(0, len(text), 5):
        r.feed(text[i : i + 5])
        t[0] += 0.005
        for out in face.outputs:
            if id(out) not in seen:
                seen.add(id(out))
                watch(out)
        # every Output but the current tail is frozen: its outputs never change again
        for out in face.outputs:
            if out is not face._tail:
                frozen.setdefault(id(out), out.outputs)
                assert out.outputs == frozen[id(out)]
    r.finish("done")
    outs = face.outputs
    md = [o.outputs[0]["data"]["text/markdown"] for o in outs]
    assert "".join(md[:-1]) == "".join(sanitize_markdown(b) for b in expected_blocks(text))
    assert all(len(o.outputs) == 1 and o.outputs[0]["output_type"] == "display_data" for o in outs)
    boxes = list(face.widget.children) + [p for c in face.widget.children for p in c.children]
    assert all(len(box.children) <= 2 for box in boxes)
    assert len(face.widget.children) >= 2  # 2 x 2 Outputs per chapter: the tree has grown
    assert len(outs) > 5
    # each Output changed only while it was the tail, and at most once after that (its final state)
    assert all(len(v) <= r.tail_updates for v in changes.values())


# -- TerminalFace ------------------------------------------------------------------------
def test_terminal_face_streams_raw_text_without_rerendering():
    buf = io.StringIO()
    flushes = []
    buf.flush = lambda: flushes.append(buf.tell())
    r = Renderer(TerminalFace(buf))
    for piece in ["# Title\n\nSome ", "*text* with <b>", " tags\x1b[31m red", "\x07"]:
        r.feed(piece)
    r.finish("⏱ 4 tokens")
    assert buf.getvalue() == "# Title\n\nSome *text* with <b> tags\\x1b[31m red\\x07\n⏱ 4 tokens\n"
    assert len(flushes) >= 4

    buf = io.StringIO()
    r = Renderer(TerminalFace(buf))
    r.feed("partial")
    r.fail("boom", stopped=True)
    assert buf.getvalue() == "partial\n" + STOPPED + "\n"


def test_terminal_face_block_interface_prints_only_new_text():
    buf = io.StringIO()
    face = TerminalFace(buf)
    face.set_tail("Hel")
    face.set_tail("Hello")
    face.add_block("Hello world\n")
    face.set_tail("Next")
    face.close_tail()
    face.error("⚠ failed")
    assert buf.getvalue() == "Hello world\nNext\n⚠ failed\n"


# -- choosing ---------------------------------------------------------------------------
def test_choose_face():
    assert choose_face("auto") is TerminalFace  # no kernel here
    assert choose_face("display") is DisplayFace
    assert choose_face("widget") is WidgetFace
    assert choose_face("TERMINAL") is TerminalFace
    with pytest.raises(ValueError):
        choose_face("html")


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, opchat_magic.render; print(sorted(m for m in ('IPython', 'ipywidgets', 'ipykernel') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_stop_before_any_text_says_so():
    from opchat_magic.render import STOPPED_EMPTY, TerminalFace

    buf = io.StringIO()
    r = Renderer(TerminalFace(stream=buf))
    r.fail("stopped by the user", stopped=True)
    assert buf.getvalue().strip() == STOPPED_EMPTY


# -- waiting for the first chunk ------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_waiting_line_counts_seconds_until_the_first_chunk():
    from opchat_magic.render.renderer import waiting_text

    clock = FakeClock()
    face = CountingFace()
    r = Renderer(face, interval=0.05, clock=clock)
    for t in (0.2, 0.6, 0.9):  # a quick reply never shows it
        clock.now = 100.0 + t
        r.tick()
    assert face.calls == []
    shown = []
    for t in (1.0, 1.3, 1.9, 2.0, 2.5, 65.2):
        clock.now = 100.0 + t
        r.tick()
    shown = [md for _, kind, md in face.calls if kind == "tail"]
    assert shown == [waiting_text(1), waiting_text(2), waiting_text(65)]  # once a second, no more
    assert "waiting for the first chunk" in shown[0] and "65 s" in shown[-1]
    r.feed("Hello")  # the first chunk replaces it
    assert face.calls[-1][1:] == ("tail", "Hello")
    clock.now += 5
    r.tick()
    assert not any("waiting" in md for _, kind, md in face.calls[4:])
    r.finish()


@pytest.mark.parametrize("stopped", [True, False])
def test_waiting_line_removed_when_the_turn_ends_without_text(stopped):
    from opchat_magic.render.renderer import STOPPED_EMPTY

    clock = FakeClock()
    face = CountingFace()
    r = Renderer(face, clock=clock)
    clock.now += 3
    r.tick()
    r.fail("boom", stopped=stopped)
    kinds = [(kind, md) for _, kind, md in face.calls]
    assert kinds[-2] == ("tail", "")  # the waiting line is gone before the marker
    assert kinds[-1] == ("error", STOPPED_EMPTY if stopped else "⚠ boom")


def test_no_waiting_line_on_a_raw_face():
    clock = FakeClock()

    class Raw(CountingFace):
        streams_raw = True

        def write(self, text):
            self._rec("write", text)

    face = Raw()
    r = Renderer(face, clock=clock)
    clock.now += 10
    r.tick()
    assert face.calls == []
