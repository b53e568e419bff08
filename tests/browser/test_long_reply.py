"""A reply of any length shows whole, its tail included, under default settings.

JupyterLab and Notebook 7 render at most 50 outputs per cell (``maxNumberOutputs``)
and put a "Show more outputs" button in place of the rest. A 100 K-character
reply streams into a cell of each, with the default settings, and the test sees
its last line rendered and no trimmed outputs.
"""
from __future__ import annotations

import pytest

from opchat_magic.server import reply_text

pytestmark = pytest.mark.browser

# ~16,000 words is ~110 K characters; 200-character chunks keep the stream short.
LONG = "A very long answer please [[words:16000]] [[chunk:200]] [[delay:0.002]]"


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_a_100k_reply_shows_whole_with_default_settings(start_notebook, chat_server, app):
    from playwright.sync_api import expect

    expected = reply_text([{"role": "user", "content": LONG}], chunk_size=200)
    assert len(expected) >= 100_000
    last_line = [line for line in expected.splitlines() if line.strip()][-1]
    last_words = " ".join(last_line.split()[-6:]).strip("`*")
    nb = start_notebook(app, [f"%%opchat -t long-{app}\n{LONG}"])
    try:
        nb.run(1, timeout=120)
        out = nb.output(1)
        expect(out).to_contain_text("first chunk", timeout=30_000)  # the footer: the reply ended
        text = out.inner_text()
        assert last_words in " ".join(text.split()), last_words
        assert out.locator(".jp-TrimmedOutputs").count() == 0, "outputs were trimmed"
        outputs = out.locator(".jp-OutputArea-child").count()
        assert 2 <= outputs < 30, outputs
    finally:
        nb.close()
