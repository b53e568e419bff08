"""Tables readable everywhere: Markdown in Jupyter, aligned text in terminal IPython (a real tmux terminal)."""
from __future__ import annotations

import mistune

from opchat_magic.render.tables import Table, Text, plain_cell


def test_text_form_is_aligned_and_inert():
    t = Table(["thread", "messages"], [["default", 6], ["ideas\x1b[31m", 12], ["日本語", 1]])
    lines = repr(t).splitlines()
    assert lines[0] == "thread         messages"
    assert lines[1] == "-------------  --------"
    assert lines[2] == "default        6"
    assert lines[3] == "ideas\\x1b[31m  12"  # the escape shows, inert, as everywhere text reaches a terminal
    assert lines[4] == "日本語         1"  # wide characters count two columns
    assert "\x1b" not in repr(t)


def test_markdown_form_escapes_user_text():
    t = Table(["thread", "value"], [["<img src=x onerror=alert(1)>", "a|b"]], code=["value"])
    html = mistune.create_markdown(escape=True, plugins=["table"])(t._repr_markdown_())
    assert "<table>" in html and "<img" not in html
    assert "<code>a|b</code>" in html or "<code>a\\|b</code>" in html


def test_empty_table_and_long_cells():
    assert repr(Table(["a"], [], empty="no threads yet")) == "no threads yet"
    assert plain_cell("x" * 200, 10) == "x" * 9 + "…"
    assert repr(Text("**bold**", "bold")) == "bold"
