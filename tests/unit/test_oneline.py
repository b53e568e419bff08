"""The one-line form: its flags, and the rewrite that keeps `?` questions away from IPython's help."""
from __future__ import annotations

import pytest
from IPython.core.inputtransformer2 import TransformerManager

from opchat_magic.ipython.oneline import LineFlagError, parse_line, transform_opchat_lines


def test_flags_then_free_text():
    r = parse_line("-t maths -m gpt-4o -p openai -s 'Be brief.' What's a monad?")
    assert (r.thread, r.model, r.provider, r.system) == ("maths", "gpt-4o", "openai", "Be brief.")
    assert r.text == "What's a monad?"  # the unbalanced quote is the user's, kept as typed
    r = parse_line('--system="You are terse" --image a.png --image "my plot.png" Compare these')
    assert r.system == "You are terse" and r.images == ["a.png", "my plot.png"] and r.text == "Compare these"
    assert parse_line("What is -t here?").text == "What is -t here?"  # flags only lead
    assert parse_line("-- -t is a flag?").text == "-t is a flag?"
    assert parse_line("  plain  ").text == "plain"


@pytest.mark.parametrize("line,pattern", [("-x hello", "does not know the flag -x"),
                                          ("-t", "-t needs a value")])
def test_bad_flags(line, pattern):
    with pytest.raises(LineFlagError, match=pattern):
        parse_line(line)


def manager():
    tm = TransformerManager()
    tm.cleanup_transforms.append(transform_opchat_lines)
    return tm


def test_question_reaches_the_magic_not_help():
    plain = TransformerManager().transform_cell("%opchat What is a monad?\n")
    assert "pinfo" in plain  # what IPython does on its own
    code = manager().transform_cell("%opchat What is a monad?\n")
    assert code == "get_ipython().run_line_magic('opchat', 'What is a monad?')\n"
    code = manager().transform_cell("x = 1\n%opchat -t t Why is {x} odd?\nprint(x)\n")
    assert code.splitlines() == ["x = 1", "get_ipython().run_line_magic('opchat', 'Why is {x} odd?')".replace(
        "'Why", "'-t t Why"), "print(x)"]


def test_commands_help_and_cells_are_left_to_ipython():
    tm = manager()
    assert tm.transform_cell("%opchat providers\n") == "get_ipython().run_line_magic('opchat', 'providers')\n"
    assert "pinfo" in tm.transform_cell("%opchat?\n")
    assert "pinfo" in tm.transform_cell("%opchat_retry?\n")
    cell = "%%opchat\nWhat is %opchat about?\n"
    assert transform_opchat_lines(cell.splitlines(True)) == cell.splitlines(True)
    indented = ["if x:\n", "    %opchat hi?\n"]
    assert transform_opchat_lines(indented) == indented


def test_awaitable_form():
    (line,) = transform_opchat_lines(["%opchat What is a monad?\n"], awaitable=True)
    assert line.startswith("await __import__('opchat_magic.ipython.oneline')")
    assert line.endswith("._await_line('What is a monad?')\n")
