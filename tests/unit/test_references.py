"""Prompt fields ({name}, {In[N]}, {Out[N]}, {Err[N]}, {Err}), the error recorder, bounded values
and the explain prompt, against a real IPython shell running real cells.

What reaches the wire from a kernel is tested in the kernel tests; here the
pieces are checked one by one.
"""
from __future__ import annotations

import re

import pytest
from IPython.core.interactiveshell import InteractiveShell

from opchat_magic.errors import OpchatError
from opchat_magic.images import Image
from opchat_magic.context import cell_errors
from opchat_magic.context.cell_errors import CellError, ErrorLog, strip_ansi
from opchat_magic.context.explain import explain_prompt, fence, find_error
from opchat_magic.context.references import CellReferenceError, Notebook, resolve
from opchat_magic.context.values import DEFAULT_CAP, clip, summarize_pandas, value_text

ANSI = re.compile(r"\x1b\[")


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    ip.history_manager.reset()
    ip.execution_count = 1
    ip.displayhook.flush()
    log = cell_errors.install(ip)
    log.clear()
    yield ip
    cell_errors.uninstall(ip)


def run(shell, source):
    return shell.run_cell(source, store_history=True)


def notebook(shell):
    return Notebook.from_shell(shell)


def fields(shell, template, **kw):
    return resolve(template, notebook(shell), **kw)


# -- the error recorder ------------------------------------------------------------------------

def test_recorder_keeps_each_cells_error_without_ansi(shell):
    run(shell, "x = 1")
    run(shell, "def f(v):\n    return 1 / v\nf(0)")
    run(shell, "y = [1, 2]\ny[5]")
    log = cell_errors.error_log(shell)
    first, second = log.get(2), log.get(3)
    assert log.get(1) is None and log.counts() == [2, 3] and log.last() is second
    assert (first.type, first.message) == ("ZeroDivisionError", "division by zero")
    assert first.source == "def f(v):\n    return 1 / v\nf(0)"
    # IPython's own traceback (what the user saw): cell and line, the failing code, no colours.
    assert "Cell In[2], line 3" in first.traceback and "return 1 / v" in first.traceback
    assert first.traceback.rstrip().endswith("ZeroDivisionError: division by zero")
    assert not ANSI.search(first.traceback)
    assert second.summary == "IndexError: list index out of range"


def test_recorder_syntax_and_usage_errors(shell):
    run(shell, "x = (")
    run(shell, "%timeit -z")
    log = cell_errors.error_log(shell)
    syntax = log.get(1)
    assert syntax.type == "SyntaxError" and "x = (" in syntax.traceback and not ANSI.search(syntax.traceback)
    usage = log.get(2)
    assert usage.type == "UsageError" and usage.traceback == f"UsageError: {usage.message}"


def test_recorder_skips_opchat_cells_and_unregisters(shell):
    shell.register_magic_function(lambda line: 1 / 0, "line", "opchat_broken")
    try:
        run(shell, "%opchat_broken")
    finally:  # the shell is shared with other test modules
        del shell.magics_manager.magics["line"]["opchat_broken"]
    log = cell_errors.error_log(shell)
    assert len(log) == 0
    assert cell_errors.install(shell) is log  # idempotent: one hook
    assert shell.events.callbacks["post_run_cell"].count(log.post_run_cell) == 1
    cell_errors.uninstall(shell)
    run(shell, "1/0")
    assert cell_errors.error_log(shell) is None and len(log) == 0
    assert log.post_run_cell not in shell.events.callbacks["post_run_cell"]


def test_recorder_bounds_a_huge_traceback(shell):
    run(shell, "def r(n):\n    return r(n + 1)\nr(0)")
    record = cell_errors.error_log(shell).last()
    assert record.type == "RecursionError"
    assert len(record.traceback) <= cell_errors.MAX_TRACEBACK_CHARS + 200
    assert record.traceback.rstrip().endswith("maximum recursion depth exceeded")


def test_strip_ansi():
    assert strip_ansi("\x1b[0;31mValueError\x1b[0m: \x1b[38;5;241;43mx\x1b[39;49m") == "ValueError: x"


# -- fields ------------------------------------------------------------------------------------

def test_in_out_err_and_names(shell):
    run(shell, "a = 21")                      # 1
    run(shell, "a * 2")                       # 2 -> Out[2] = 42
    run(shell, "int('x')")                    # 3 -> ValueError
    run(shell, "name = 'bread'")              # 4
    shell.execution_count = 5                 # the running cell
    prompt = fields(shell, "In: {In[2]} Out: {Out[2]} var: {name} {{literal}} last: {In[-1]}")
    assert prompt.text == "In: a * 2 Out: 42 var: bread {literal} last: name = 'bread'"
    assert prompt.references == ["In[2]", "Out[2]", "name", "In[4]"]
    assert prompt.images == [] and prompt.cuts == [] and prompt.notice == ""
    err = fields(shell, "{Err[3]}").text
    assert err.startswith("ValueError: invalid literal for int() with base 10: 'x'\n\n")
    assert "Cell In[3], line 1" in err and not ANSI.search(err)
    assert fields(shell, "{Err}").text == err
    assert fields(shell, "{ Err[-2] }").text == err  # spaces inside the braces are fine


def test_escapes_follow_str_format(shell):
    shell.user_ns["v"] = 7
    assert fields(shell, "{{{v}}} {{v}} }} {{ a } b { c").text == "{7} {v} } { a } b { c"
    # A field spans one line: braces around a multi-line block pass as they are.
    assert fields(shell, "int f() {\n  return 1;\n}").text == "int f() {\n  return 1;\n}"


@pytest.mark.parametrize("template,pattern", [
    ("{nope}", r"\{nope\} names no variable.*\{\{nope\}\}"),
    ("{x.real}", r"\{x\.real\} in the prompt is neither a variable name nor a cell reference.*\{\{x\.real\}\}"),
    ("{a + 1}", r"neither a variable name nor a cell reference"),
    ('{"k": 1}', r"neither a variable name nor a cell reference"),
    ("{}", r"Empty braces"),
    ("{Out}", r"\{Out\} needs a cell number: \{Out\[3\]\}"),
    ("{In}", r"\{In\} needs a cell number"),
    ("{In[9]}", r"cell 9 has not run yet \(the last cell run is 2\)"),
    ("{In[-5]}", r"counts back 5 cells from cell 3, before the first cell"),
    ("{In[0]}", r"numbered from 1"),
    ("{Out[1]}", r"cell 1 has no output.*Cells with an output: 2\."),
    ("{Err[2]}", r"cell 2 raised no error \(no cell has raised one yet\)"),
    ("{Err}", r"no cell has raised an error"),
])
def test_bad_fields_are_usage_errors_and_nothing_is_sent(shell, template, pattern):
    run(shell, "x = 1")
    run(shell, "x + 1")
    shell.execution_count = 3
    with pytest.raises(CellReferenceError, match=pattern) as info:
        fields(shell, "Tell me: " + template)
    assert str(info.value).endswith("Nothing was sent.")
    assert isinstance(info.value, OpchatError) and isinstance(info.value, ValueError)


def test_out_lists_cells_with_output_and_err_lists_raisers(shell):
    run(shell, "1")
    run(shell, "1/0")
    shell.execution_count = 3
    with pytest.raises(CellReferenceError, match=r"cells that raised: 2\)"):
        fields(shell, "{Err[1]}")
    # Errors not recorded (the extension never loaded) are said so.
    with pytest.raises(CellReferenceError, match="not being recorded"):
        resolve("{Err}", Notebook(namespace={}, errors=None))


# -- bounded values ----------------------------------------------------------------------------

def test_long_value_is_cut_with_a_visible_marker(shell):
    shell.user_ns["log"] = "".join(f"line {i}\n" for i in range(40_000))
    total = len(shell.user_ns["log"])
    prompt = fields(shell, "{log}", cap=1_000)
    left_out = total - 1_000
    assert f"[... {left_out:,} of {total:,} characters of log left out here ...]" in prompt.text
    assert prompt.text.startswith("line 0\n") and prompt.text.rstrip().endswith("line 39999")
    assert len(prompt.text) < 1_200
    (cut,) = prompt.cuts
    assert (cut.what, cut.total, cut.kept, cut.left_out) == ("log", total, 1_000, left_out)
    assert prompt.notice == f"input cut: {left_out:,} of {total:,} characters of log left out"
    # The default cap is 100,000 characters; under it nothing is cut.
    assert DEFAULT_CAP == 100_000
    assert fields(shell, "{log}").cuts[0].kept == 100_000
    assert clip("short", 100) == ("short", None) and clip("x" * 10, 0) == ("x" * 10, None)


def test_inputs_and_errors_are_bounded_too(shell):
    run(shell, "s = '" + "a" * 5_000 + "'")
    shell.execution_count = 2
    prompt = fields(shell, "{In[1]}", cap=100)
    assert prompt.cuts[0].what == "In[1]" and "characters of In[1] left out" in prompt.text


def test_dataframe_becomes_a_summary(shell):
    pandas = pytest.importorskip("pandas", reason="pandas is in the test extra")
    frame = pandas.DataFrame({"city": [f"c{i}" for i in range(10_000)], "pop": range(10_000),
                              "area": [float(i) / 3 for i in range(10_000)]})
    shell.user_ns["df"] = frame
    text = fields(shell, "{df}").text
    assert text.startswith("pandas DataFrame: 10,000 rows × 3 columns")
    assert "- city: " in text and "- pop: int64" in text and "- area: float64" in text
    assert "First 5 rows:" in text and "c4" in text and "c5" not in text
    wide = pandas.DataFrame({f"col{i}": [i] for i in range(250)})
    summary = summarize_pandas(wide)
    assert "- col99: int64" in summary and "- col100" not in summary and "... and 150 more columns" in summary
    series = summarize_pandas(frame["pop"])
    assert series.startswith("pandas Series 'pop': 10,000 values, dtype int64")
    assert summarize_pandas([1, 2]) is None and value_text(frame.iloc[:0])[0].startswith("pandas DataFrame: 0 rows")


# -- images in fields --------------------------------------------------------------------------

def test_matplotlib_figure_output_is_an_image(shell):
    pytest.importorskip("matplotlib", reason="matplotlib is in the test extra")
    run(shell, "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt")
    run(shell, "fig, ax = plt.subplots()\nax.plot([1, 2, 3])\nfig")          # Out[2]: a Figure
    run(shell, "plt.figure(); plt.plot([3, 2, 1])")                           # Out[3]: [Line2D]
    shell.execution_count = 4
    prompt = fields(shell, "Compare {Out[2]} with {Out[3]} and {Out[2]} again")
    assert prompt.text == "Compare [image: Out[2]] with [image: Out[3]] and [image: Out[2]] again"
    assert [i.source for i in prompt.images] == ["Out[2]", "Out[3]"]  # each image once
    assert all(i.mime == "image/png" and i.data.startswith(b"\x89PNG") for i in prompt.images)
    assert prompt.images[0].sha256 != prompt.images[1].sha256


def test_ipython_image_output_and_variable(shell):
    from test_images import JPEG, png
    shell.user_ns["pic"] = __import__("IPython.display", fromlist=["Image"]).Image(data=png(), format="png")
    run(shell, f"from IPython.display import Image\nImage(data={JPEG!r}, format='jpeg')")
    shell.execution_count = 2
    prompt = fields(shell, "{pic} {Out[1]}")
    assert prompt.text == "[image: pic] [image: Out[1]]"
    assert [(i.mime, i.data) for i in prompt.images] == [("image/png", png()), ("image/jpeg", JPEG)]
    # A linked image (no bytes) stays text: its URL.
    linked = __import__("IPython.display", fromlist=["Image"]).Image(url="https://example.org/a.png", embed=False)
    shell.user_ns["linked"] = linked
    assert fields(shell, "{linked}").images == []


def test_too_big_image_is_a_clear_error(shell):
    from test_images import png
    from opchat_magic.images import ImageError
    shell.user_ns["pic"] = __import__("IPython.display", fromlist=["Image"]).Image(data=png(), format="png")
    with pytest.raises(ImageError, match="pic is .* images are limited to"):
        fields(shell, "{pic}", max_image_bytes=10)


# -- explain -----------------------------------------------------------------------------------

def test_explain_prompt_carries_source_error_and_traceback(shell):
    run(shell, "import json")
    run(shell, "json.loads('{bad')")
    record = find_error(cell_errors.error_log(shell))
    prompt = explain_prompt(record)
    text = prompt.text
    assert text.startswith("Explain the error this cell of my Jupyter notebook raised")
    assert "Cell In[2]:\n```python\njson.loads('{bad')\n```" in text
    assert "Error: JSONDecodeError: Expecting property name enclosed in double quotes" in text
    assert "Traceback:\n```\n" in text and "Cell In[2], line 1" in text and not ANSI.search(text)
    assert prompt.references == ["In[2]", "Err[2]"] and prompt.cuts == []
    assert find_error(cell_errors.error_log(shell), 2) is record
    assert find_error(cell_errors.error_log(shell), -1, current=3) is record
    with pytest.raises(CellReferenceError, match=r"Cell 1 raised no error; cells that raised: 2\."):
        find_error(cell_errors.error_log(shell), 1)


def test_explain_with_nothing_to_explain(shell):
    with pytest.raises(CellReferenceError, match="nothing to explain"):
        find_error(cell_errors.error_log(shell))
    with pytest.raises(CellReferenceError, match="not being recorded"):
        find_error(None)


def test_explain_bounds_and_fences():
    record = CellError(7, "ValueError", "bad", "x" * 500 + "\nValueError: bad", "print('```')\n" + "y" * 500)
    prompt = explain_prompt(record, cap=100)
    assert [c.what for c in prompt.cuts] == ["In[7]", "Err[7]"]
    assert "````python\nprint('```')" in prompt.text  # a fence longer than the source's own
    assert fence("a ````` b").startswith("``````\n")


def test_explain_fits_an_endpoint_limit():
    source = "".join(f"step_{i} = {i}\n" for i in range(60)) + "result = load('data.csv')\n"
    frames = "\n".join(f"File lib.py:{i}, in f{i}\n    call()" for i in range(40))
    traceback = "-" * 75 + "\nFileNotFoundError    Traceback (most recent call last)\n" + frames + \
        "\nFileNotFoundError: [Errno 2] No such file or directory: 'data.csv'"
    record = CellError(9, "FileNotFoundError", "[Errno 2] No such file or directory: 'data.csv'", traceback, source)
    full = explain_prompt(record)
    assert len(full.text) > 512 and full.cuts == []
    short = explain_prompt(record, budget=512)
    text = short.text
    assert len(text) <= 512, len(text)
    assert text.startswith("Explain this Jupyter error and how to fix it.")
    assert "Error: FileNotFoundError: [Errno 2] No such file or directory: 'data.csv'" in text
    assert "step_0 = 0" in text and "-" * 75 not in text
    assert text.rstrip("`\n").endswith("No such file or directory: 'data.csv'")  # the traceback's end is kept
    assert [c.what for c in short.cuts] == ["In[9]", "Err[9]"] and "input cut" in short.notice
    # Under the limit nothing changes.
    assert explain_prompt(record, budget=100_000).text == full.text
