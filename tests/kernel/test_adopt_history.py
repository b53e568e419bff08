"""History follows a renamed or moved notebook: `%opchat_threads --notebooks` lists what other
notebooks stored, `%opchat_adopt N` takes it over (two real kernels, one history file)."""
from __future__ import annotations

import pytest

from opchat_magic.server import LocalServer
from opchat_magic.testing.kernel import Kernel

pytestmark = pytest.mark.kernel


def test_a_renamed_notebook_adopts_its_threads(tmp_path):
    db = tmp_path / "history.sqlite3"
    old, new = tmp_path / "analysis.ipynb", tmp_path / "renamed" / "analysis-v2.ipynb"
    old.write_text("{}")
    with LocalServer(delay=0) as server:
        setup = f"%load_ext opchat_magic\n%config OpchatMagics.url = {server.url!r}"
        with Kernel(env={"JPY_SESSION_NAME": str(old), "OPCHAT_HISTORY_DB": str(db)}) as k:
            k.run(setup)
            k.run("%%opchat\nfirst")
            k.run("%%opchat\nsecond")
            k.run("%%opchat -t ideas\nan idea")
        new.parent.mkdir()
        old.rename(new)  # the notebook moves and changes its name: its key (the path) changes
        with Kernel(env={"JPY_SESSION_NAME": str(new), "OPCHAT_HISTORY_DB": str(db)}) as k:
            k.run(setup)
            hint = k.run("%opchat_threads").of_type("display_data")[-1]["content"]["data"]["text/plain"]
            assert "No history here yet" in hint and "%opchat_adopt N" in hint  # it says where to look
            k.run("%%opchat -t ideas\na new idea here")  # a thread of the same name exists already
            listing = k.run("%opchat_threads --notebooks")
            data = listing.of_type("display_data")[-1]["content"]["data"]
            assert str(old) in data["text/plain"] and "gone (moved or renamed?)" in data["text/plain"]
            rows = data["text/plain"].split("\n-")[-1]  # the rows: only other notebooks
            assert str(new) not in rows and rows.count(".ipynb") == 1
            adopted = k.run("%opchat_adopt 1")
            assert f"adopted from {old}" in adopted.stdout
            assert "ideas (now ideas (analysis))" in adopted.stdout
            # The conversation goes on where the old notebook left it.
            ex = k.run("%%opchat\nthird")
            assert ex.shows("This conversation has 5 messages.")
            threads = k.run("%opchat_threads").of_type("display_data")[-1]["content"]["data"]["text/plain"]
            assert "ideas (analysis)" in threads and "default (default)" in threads
            assert k.value("len(get_ipython().magics_manager.registry['OpchatMagics'].conversation"
                           ".thread('ideas').messages)") == 2
            bad = k.run("%opchat_adopt 7", check=False)
            assert bad.error["ename"] == "UsageError" and "--notebooks" in bad.error["evalue"]
        # A third kernel on the new path sees the adopted history from the store.
        with Kernel(env={"JPY_SESSION_NAME": str(new), "OPCHAT_HISTORY_DB": str(db)}) as k:
            k.run(setup)
            assert k.run("%%opchat\nfourth").shows("This conversation has 7 messages.")
