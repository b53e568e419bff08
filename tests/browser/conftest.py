"""Fixtures for the browser suite: JupyterLab / Notebook 7 + headless Chromium (Playwright).

Thin wrappers around :mod:`opchat_magic.testing.browser` (launch flags, the
kernel-connected race, isolation of every Jupyter/IPython directory).

* ``chat_server``: the LocalServer, in this process on 127.0.0.1, for the session.
* ``browser``: one Chromium (a persistent context), per test module.
* ``start_notebook(app, cells)``: a JupyterLab (``app="lab"``) or Notebook 7
  (``"notebook"``) server over a temp root holding a generated notebook whose
  first cell loads the extension and points it at ``chat_server``; returns a
  :class:`NotebookPage` (opened, kernel connected and idle). Test modules wrap
  it in a module-scoped fixture: one Jupyter server per flavour.

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

from opchat_magic.testing.browser import NotebookPage, chromium, jupyter, missing, setup_cell, write_notebook

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
        write_notebook(root, [setup_cell(chat_server.url)] + list(cells))
        stack = contextlib.ExitStack()
        started.append(stack)
        base = stack.enter_context(jupyter(app, root, cfg, timeout=timeout))  # stopped last
        page = browser.new_page()
        stack.callback(_close_quietly, page)                                 # closed first
        notebook = NotebookPage(page, base, app, root, cfg / "server.log", on_close=stack.close)
        notebook.open()
        notebook.run(0)
        return notebook

    yield start
    for stack in started:
        stack.close()


def _close_quietly(page) -> None:
    try:
        page.close()
    except Exception:
        pass
