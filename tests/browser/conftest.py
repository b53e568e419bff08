"""Fixtures for the browser suite: JupyterLab / Notebook 7 + headless Chromium (Playwright).

Thin wrappers around :mod:`opchat_magic.testing.browser` (launch flags, the
kernel-connected race, isolation of every Jupyter/IPython directory).

* ``chat_server``: the LocalServer, in this process on 127.0.0.1, for the session.
* ``browser``: one Chromium (a persistent context), per test module.
* ``start_notebook(app, cells)``: a JupyterLab (``app="lab"``) or Notebook 7
  (``"notebook"``) server over a temp root holding a generated notebook whose
  first cell loads the extension and points it at ``chat_server``; returns a
  :class:`NotebookPage` (opened, kernel connected and idle).
* ``nb``: the test module's notebook, ``start_notebook(module.APP, module.CELLS)``,
  one Jupyter server per module (so per flavour), closed at the module's end.
* ``check_cell_streams(nb, index, message)``: run a ``%%opchat`` cell and check the
  reply streams in (its first line before the footer and any list), then ends rendered.

The whole suite is skipped, with the reason, when /usr/bin/chromium or the
playwright package is missing, unless ``OPCHAT_REQUIRE_BROWSER=1`` (CI), which
turns the skip into a failure.

Screenshots go to a temp folder; with ``OPCHAT_SCREENSHOTS=1`` they are also
copied into ``docs/`` (see the ``screenshot`` fixture).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import List

import pytest

from opchat_magic.testing.browser import NotebookPage, chromium, missing, open_notebook

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@pytest.fixture(scope="session", autouse=True)
def _browser_available():
    reason = missing()
    if reason:
        if os.environ.get("OPCHAT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser suite required (OPCHAT_REQUIRE_BROWSER=1) but {reason}", pytrace=False)
        pytest.skip(f"browser suite skipped: {reason}")


# -- the chat server and the browser ------------------------------------------------

@pytest.fixture(scope="session")
def chat_server():
    from opchat_magic.server import LocalServer

    with LocalServer(delay=0.02) as server:
        yield server


# Module scope, not session: Playwright's sync API keeps an event loop marked as
# running in the main thread while it lives, and later async tests (pytest-asyncio)
# refuse to start their own loop under it.
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chrome"), tmp_path_factory.mktemp("home")) as ctx:
        yield ctx


@pytest.fixture(scope="session")
def screenshot(tmp_path_factory):
    """``screenshot(locator_or_page, name) -> Path``: always into a temp folder; with
    OPCHAT_SCREENSHOTS=1 also copied to docs/<name>."""
    folder = tmp_path_factory.mktemp("screenshots")

    def take(target, name: str) -> Path:
        path = folder / name
        target.screenshot(path=str(path))
        if os.environ.get("OPCHAT_SCREENSHOTS") == "1":
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(path, DOCS / name)
        return path

    return take


# -- a notebook in JupyterLab or Notebook 7 -----------------------------------------------

@pytest.fixture(scope="module")
def start_notebook(browser, chat_server, tmp_path_factory):
    """``start_notebook(app, cells) -> NotebookPage``: cell 0 is the setup cell (already run),
    ``cells`` follow it. Call ``.close()`` at the end of the module; leftovers end with the module."""
    started: List[contextlib.ExitStack] = []

    def start(app: str, cells: List[str], timeout: float = 60) -> NotebookPage:
        root, cfg = tmp_path_factory.mktemp(f"{app}-root"), tmp_path_factory.mktemp(f"{app}-cfg")
        stack = contextlib.ExitStack()
        started.append(stack)
        return open_notebook(stack, browser, app, root, cfg, chat_server.url, cells, timeout=timeout)

    yield start
    for stack in started:
        stack.close()


@pytest.fixture(scope="module")
def nb(start_notebook, request):
    """The module's notebook: ``APP`` (``"lab"`` / ``"notebook"``) and ``CELLS`` from the test module."""
    notebook = start_notebook(request.module.APP, request.module.CELLS)
    yield notebook
    notebook.close()


@pytest.fixture(scope="session")
def check_cell_streams(chat_server):
    """``check_cell_streams(nb, index, message) -> output locator``: run cell ``index`` (a
    ``%%opchat`` cell sending ``message``, long enough to take seconds) and check its reply
    streams: the first line shows while the footer and the list are still to come; then
    the cell ends with a rendered heading, a list and the footer."""
    from playwright.sync_api import expect

    from opchat_magic.server import reply_text

    def check(nb: NotebookPage, index: int, message: str):
        expected = reply_text([{"role": "user", "content": message}], chunk_size=chat_server.config.chunk_size)
        heading = expected.splitlines()[0].lstrip("# ").strip()
        nb.run(index, wait=False)
        out = nb.output(index)
        # Partial text shows up while the reply is still streaming.
        expect(out).to_contain_text(heading, timeout=15_000)
        assert "first chunk" not in out.inner_text(), "the footer came with the first text: the reply did not stream"
        assert out.locator("li").count() == 0, "the whole reply arrived at once"
        # The end: rendered Markdown (a heading and a list) and the footer.
        expect(out).to_contain_text("first chunk", timeout=30_000)
        nb.wait_done(index, timeout=30)
        expect(out.locator("h1").first).to_be_visible()
        assert out.locator("li").count() >= 1
        return out

    return check
