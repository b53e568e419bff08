"""The magic's pure parts: the cell rewrite, interpolation, code extraction; load, unload, reload."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from opchat_magic.ipython.magics import OpchatMagics, extract_code
from opchat_magic.ipython.transformer import _Transformer, transform_opchat_cell


def test_opchat_cell_becomes_a_top_level_await():
    out = transform_opchat_cell(["%%opchat -t ideas\n", "say {x}\n", "and 'quotes' \"too\"\n"])
    assert len(out) == 1 and out[0].startswith("await ")
    # The line and the body travel as Python literals, so any text survives the rewrite.
    assert "'-t ideas'" in out[0]
    assert repr("say {x}\nand 'quotes' \"too\"\n") in out[0]
    compile(out[0], "<cell>", "exec", flags=0x2000)  # PyCF_ALLOW_TOP_LEVEL_AWAIT


@pytest.mark.parametrize("lines", [
    ["%%opchat?\n"],            # help stays help
    ["%%opchat_other\n", "x"],  # another magic
    ["x = 1\n", "%%opchat\n"],  # a cell magic only counts on the first line
    ["%opchat providers\n"],    # the line magic
    [],
])
def test_other_cells_are_left_alone(lines):
    assert transform_opchat_cell(list(lines)) == list(lines)


# {name} interpolation and the other fields: tests/test_references.py (the one resolver).


def test_code_format_extracts_every_fenced_block():
    md = "Intro\n\n```python\nx = 1\n```\n\ntext\n\n~~~\ny = 2\n\nz = 3\n~~~\n"
    assert extract_code(md) == "x = 1\n\ny = 2\n\nz = 3"
    assert extract_code("no code here") == ""


def test_load_and_unload_leave_the_shell_as_it_was():
    from IPython.core.interactiveshell import InteractiveShell

    from opchat_magic import load_ipython_extension, unload_ipython_extension

    shell = InteractiveShell.instance()
    shell.run_line_magic("config", "OpchatMagics.persist = False")
    transformers = list(shell.input_transformers_cleanup)
    hooks = list(shell.events.callbacks["post_run_cell"])
    load_ipython_extension(shell)
    load_ipython_extension(shell)  # a second load changes nothing
    assert sum(isinstance(t, _Transformer) for t in shell.input_transformers_cleanup) == 1
    from opchat_magic.context.cell_errors import error_log
    log = error_log(shell)
    assert log is not None and shell.events.callbacks["post_run_cell"].count(log.post_run_cell) == 1
    assert "opchat" in shell.magics_manager.magics["cell"]
    assert {"opchat_reset", "opchat_history", "opchat_threads", "opchat_retry", "opchat_panel", "opchat",
            "opchat_explain"} <= set(shell.magics_manager.magics["line"])
    unload_ipython_extension(shell)
    assert shell.input_transformers_cleanup == transformers
    assert shell.events.callbacks["post_run_cell"] == hooks and error_log(shell) is None
    assert "opchat" not in shell.magics_manager.magics["cell"]
    assert not any(n.startswith("opchat") for n in shell.magics_manager.magics["line"])
    assert "OpchatMagics" not in shell.magics_manager.registry


def test_reload_leaves_one_configurable_and_closes_the_store(tmp_path, monkeypatch):
    """%reload_ext: the old Session's store is closed and its settings leave shell.configurables."""
    from IPython.core.interactiveshell import InteractiveShell

    from opchat_magic.session import get_session
    from opchat_magic.settings import OpchatSettings

    monkeypatch.setenv("OPCHAT_HISTORY_DB", str(tmp_path / "h.sqlite3"))
    shell = InteractiveShell.instance()
    shell.run_line_magic("config", "OpchatMagics.persist = True")
    try:
        shell.run_line_magic("load_ext", "opchat_magic")
        first = get_session(shell)
        store = first.conversation.store
        assert store is not None and store._conn is not None
        shell.run_line_magic("reload_ext", "opchat_magic")
        second = get_session(shell)
        assert second is not first and first.closed
        assert store._conn is None  # the old connection is closed, not leaked
        settings = [c for c in shell.configurables if isinstance(c, OpchatSettings)]
        assert settings == [second.settings]
        assert not any(type(c).__name__ == "OpchatMagics" for c in shell.configurables)
        shell.run_line_magic("config", "OpchatMagics.model = 'm1'")  # the documented name still configures
        assert second.settings.model == "m1"
    finally:
        shell.run_line_magic("unload_ext", "opchat_magic")
        shell.run_line_magic("config", "OpchatMagics.persist = False")
    assert not any(isinstance(c, OpchatSettings) for c in shell.configurables)
