"""Fixtures for the browser suite: JupyterLab / Notebook 7 + headless Chromium (Playwright).

Adapted from /work/shared/examples/browser_stream_test.py (launch flags, the
kernel-connected race, isolation of every Jupyter/IPython directory).

* ``chat_server``: the LocalServer, in this process on 127.0.0.1, for the session.
* ``browser``: one Chromium (a persistent context), for the session.
* ``start_notebook(app, cells)``: a JupyterLab (``app="lab"``) or Notebook 7
  (``"notebook"``) server over a temp root holding a generated notebook whose
  first cell loads the extension and points it at ``chat_server``; returns a
  :class:`NotebookPage` (opened, kernel connected and idle). Test modules wrap
  it in a module-scoped fixture: one Jupyter server per flavour.

The whole suite is skipped, with the reason, when /usr/bin/chromium or the
playwright package is missing, unless ``OPCHAT_REQUIRE_BROWSER=1`` (CI), which
turns the skip into a failure.

Screenshots go to a temp folder; with ``OPCHAT_SCREENSHOTS=1`` they are also
copied into ``docs/`` (see :func:`save_screenshot`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

from opchat_magic.testing import free_port as _free_port
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
NOTEBOOK = "chat.ipynb"


def _missing() -> Optional[str]:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright; never `playwright install`)"
    for module in ("jupyterlab", "notebook", "nbformat"):
        try:
            __import__(module)
        except ImportError:
            return f"the {module} package is not installed"
    return None


@pytest.fixture(scope="session", autouse=True)
def _browser_available():
    reason = _missing()
    if reason:
        if os.environ.get("OPCHAT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser suite required (OPCHAT_REQUIRE_BROWSER=1) but {reason}", pytrace=False)
        pytest.skip(f"browser suite skipped: {reason}")



def _get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


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
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(   # '--user-data-dir' in args is refused
            str(tmp_path_factory.mktemp("chrome")), executable_path=CHROMIUM,
            headless=True, args=CHROME_ARGS, viewport={"width": 1280, "height": 900},
            env=dict(os.environ, HOME=str(tmp_path_factory.mktemp("home"))))
        ctx.set_default_timeout(30_000)
        yield ctx
        ctx.close()


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

class NotebookPage:
    """One notebook open in the browser, with helpers to run its cells and read outputs."""

    def __init__(self, page, base: str, app: str, root: Path, log: Path, proc=None):
        self.page, self.base, self.app, self.root, self.log, self.proc = page, base, app, root, log, proc
        self.path = f"/lab/tree/{NOTEBOOK}" if app == "lab" else f"/notebooks/{NOTEBOOK}"
        self.console: List[str] = []
        self.dialogs: List[str] = []
        self.errors: List[str] = []
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

        def on_dialog(dialog):
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)

    # -- opening -------------------------------------------------------------
    def open(self, timeout: float = 90) -> "NotebookPage":
        self.page.goto(self.base + self.path)
        self.cells.first.wait_for(timeout=timeout * 1000)
        kernel = self._wait_kernel_connected(timeout)
        self._wait_kernel_idle(kernel, timeout)
        return self

    def _wait_kernel_connected(self, timeout: float) -> str:
        # The execution indicator reads "idle" before the kernel connects (its default),
        # and Shift+Enter is then silently lost: ask the server instead.
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for s in _get_json(self.base + "/api/sessions"):
                if s["path"] == NOTEBOOK and s["kernel"]["connections"] > 0:
                    return s["kernel"]["id"]
            time.sleep(0.1)
        raise TimeoutError(f"the notebook's kernel never connected; server log:\n{self.log.read_text()[-3000:]}")

    def _wait_kernel_idle(self, kernel: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if _get_json(f"{self.base}/api/kernels/{kernel}").get("execution_state") == "idle":
                return
            time.sleep(0.1)
        raise TimeoutError("the kernel never became idle")

    # -- cells -----------------------------------------------------------------
    @property
    def cells(self):
        return self.page.locator(".jp-Notebook .jp-Cell")

    def cell(self, index: int):
        return self.cells.nth(index)

    def output(self, index: int):
        return self.cell(index).locator(".jp-OutputArea")

    def run(self, index: int, wait: bool = True, timeout: float = 60) -> None:
        """Run cell ``index`` (click into it, Shift+Enter); by default wait until it finished."""
        cell = self.cell(index)
        cell.scroll_into_view_if_needed()
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Shift+Enter")
        if wait:
            self.wait_done(index, timeout)

    def wait_done(self, index: int, timeout: float = 60) -> None:
        from playwright.sync_api import expect

        expect(self.cell(index).locator(".jp-InputPrompt")).to_have_text(
            re.compile(r"\[\d+\]"), timeout=timeout * 1000)

    def pwned(self):
        return self.page.evaluate("window.__pwned")

    def close(self) -> None:
        """Close the page and stop the Jupyter server (and so its kernel)."""
        _stop(self.page, self.proc)
        self.proc = None


def _stop(page, proc) -> None:
    try:
        page.close()
    except Exception:
        pass
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM also shuts the kernel down
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _write_notebook(root: Path, cells: List[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / NOTEBOOK)


def _write_settings(cfg: Path) -> None:
    settings = cfg / "lab" / "user-settings" / "@jupyterlab"
    files = {
        # No news / update popups over the notebook.
        "apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
        # Every cell in the DOM (no windowing), so nth(i) is cell i.
        "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def start_notebook(browser, chat_server, tmp_path_factory):
    """``start_notebook(app, cells) -> NotebookPage``: cell 0 is the setup cell (already run),
    ``cells`` follow it. Call ``.close()`` at the end of the module; leftovers end with the session."""
    started = []

    def start(app: str, cells: List[str], timeout: float = 60) -> NotebookPage:
        root, cfg = tmp_path_factory.mktemp(f"{app}-root"), tmp_path_factory.mktemp(f"{app}-cfg")
        setup = (f"%load_ext opchat_magic\n%config OpchatMagics.url = {chat_server.url!r}\n"
                 "from opchat_magic.panel import ChatPanel")
        _write_notebook(root, [setup] + list(cells))
        _write_settings(cfg)
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_DATA_DIR=str(cfg / "data"),
                   JUPYTER_RUNTIME_DIR=str(cfg / "rt"), IPYTHONDIR=str(cfg / "ipy"),
                   OPCHAT_HISTORY_DB=str(cfg / "history.sqlite3"))
        for name in ("OPCHAT_URL", "OPENAI_BASE_URL", "OPCHAT_API_KEY", "OPENAI_API_KEY"):
            env.pop(name, None)
        port = _free_port()
        log = cfg / "server.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
             f"--ServerApp.root_dir={root}"],
            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        page = browser.new_page()
        started.append((proc, page))
        end = time.monotonic() + timeout
        while True:
            try:
                _get_json(base + "/api/status", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"jupyter {app} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        notebook = NotebookPage(page, base, app, root, log, proc)
        notebook.open()
        notebook.run(0)
        return notebook

    yield start
    for proc, page in started:
        _stop(page, proc)
