"""Drive JupyterLab / Notebook 7 in headless Chromium (Playwright), for tests and benchmarks.

Used by the browser test fixtures (``tests/browser/conftest.py``) and by
``benchmarks/first_pixel.py``, which is why it lives in the package:

* :func:`jupyter`: a ``jupyter lab`` or ``jupyter notebook`` server on 127.0.0.1
  over a root folder, every Jupyter/IPython directory isolated, no token, no
  news popup; a context manager yielding the base URL.
* :func:`chromium`: one headless Chromium (a Playwright persistent context);
  a context manager yielding the context.
* :func:`wait_kernel_connected` / :func:`wait_kernel_idle`: the kernel-connected
  race (the execution indicator reads "idle" before the kernel connects, and
  Shift+Enter is then silently lost), settled by asking the server.
* :class:`NotebookPage`: a notebook open in a page; run its cells, read outputs.
* :func:`open_notebook`: all of the above for one generated notebook whose first
  cell points the extension at a chat server:

    with chromium() as ctx, contextlib.ExitStack() as stack:
        nb = open_notebook(stack, ctx, "lab", root, cfg, server.url, ["%%opchat\nhello"])
        nb.run(1)

Never ``playwright install``: the browser is Debian's ``/usr/bin/chromium``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from . import free_port

__all__ = [
    "CHROMIUM", "CHROME_ARGS", "NOTEBOOK", "missing", "get_json", "setup_cell", "write_notebook",
    "write_settings", "jupyter_env", "jupyter", "chromium", "wait_kernel_connected",
    "wait_kernel_idle", "stop_process", "NotebookPage", "open_notebook",
]

CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = "chat.ipynb"


def missing() -> Optional[str]:
    """Why the browser machinery cannot run here, or None when it can."""
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


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return json.load(answer)


# -- the notebook and the Jupyter server ---------------------------------------------

def setup_cell(url: str) -> str:
    """The first cell: load the extension and point it at the chat server at ``url``."""
    return (f"%load_ext opchat_magic\n%config OpchatMagics.url = {url!r}\n"
            "from opchat_magic.panel import ChatPanel")


def write_notebook(root: Path, cells: List[str], name: str = NOTEBOOK) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = Path(root) / name
    nbformat.write(nb, path)
    return path


def write_settings(cfg: Path) -> None:
    """JupyterLab user settings under the config dir ``cfg``."""
    settings = Path(cfg) / "lab" / "user-settings" / "@jupyterlab"
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


def jupyter_env(cfg: Path) -> dict:
    """The environment of a Jupyter server (and so its kernels): every directory under
    ``cfg``, a private history database, no endpoint or key from the caller's environment."""
    cfg = Path(cfg)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_DATA_DIR=str(cfg / "data"),
               JUPYTER_RUNTIME_DIR=str(cfg / "rt"), IPYTHONDIR=str(cfg / "ipy"),
               OPCHAT_HISTORY_DB=str(cfg / "history.sqlite3"))
    for name in ("OPCHAT_URL", "OPENAI_BASE_URL", "OPCHAT_API_KEY", "OPENAI_API_KEY"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def jupyter(app: str, root: Path, cfg: Path, timeout: float = 60, log: Optional[Path] = None) -> Iterator[str]:
    """Run ``jupyter lab`` (``app="lab"``) or Notebook 7 (``"notebook"``) over ``root``, its
    settings and directories under ``cfg``, its output in ``log`` (default ``cfg/server.log``);
    yields the base URL once ``/api/status`` answers. Leaving stops it, and so its kernels."""
    write_settings(cfg)
    log = Path(log) if log is not None else Path(cfg) / "server.log"
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter", app, "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
             f"--ServerApp.root_dir={root}"],
            env=jupyter_env(cfg), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                get_json(base + "/api/status", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"jupyter {app} did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        yield base
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # SIGTERM also shuts the kernels down
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- the browser --------------------------------------------------------------------

@contextlib.contextmanager
def chromium(profile: Optional[Path] = None, home: Optional[Path] = None, *,
             viewport: Optional[dict] = None, default_timeout: float = 30_000) -> Iterator["object"]:
    """One headless Chromium as a Playwright persistent context (``BrowserContext``).

    ``profile`` / ``home``: its profile folder and ``HOME`` (temp folders when None).
    Playwright's sync API keeps an event loop marked as running in this thread
    while the context lives: do not hold it across async (pytest-asyncio) tests.
    """
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        if profile is None:
            profile = stack.enter_context(tempfile.TemporaryDirectory(prefix="opchat-chrome-"))
        if home is None:
            home = stack.enter_context(tempfile.TemporaryDirectory(prefix="opchat-home-"))
        p = stack.enter_context(sync_playwright())
        ctx = p.chromium.launch_persistent_context(   # '--user-data-dir' in args is refused
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROME_ARGS,
            viewport=viewport or {"width": 1280, "height": 900},
            env=dict(os.environ, HOME=str(home)))
        ctx.set_default_timeout(default_timeout)
        try:
            yield ctx
        finally:
            ctx.close()


# -- the kernel -----------------------------------------------------------------------

def wait_kernel_connected(base: str, notebook: str = NOTEBOOK, timeout: float = 90,
                          log: Optional[Path] = None) -> str:
    """The id of ``notebook``'s kernel once the page's websocket is connected to it.

    The execution indicator reads "idle" before the kernel connects (its default),
    and Shift+Enter is then silently lost: ask the server instead."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for s in get_json(base + "/api/sessions"):
            if s["path"] == notebook and s["kernel"]["connections"] > 0:
                return s["kernel"]["id"]
        time.sleep(0.1)
    tail = f"; server log:\n{Path(log).read_text()[-3000:]}" if log is not None else ""
    raise TimeoutError(f"the notebook's kernel never connected{tail}")


def wait_kernel_idle(base: str, kernel: str, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if get_json(f"{base}/api/kernels/{kernel}").get("execution_state") == "idle":
            return
        time.sleep(0.1)
    raise TimeoutError("the kernel never became idle")


# -- a notebook in a page ---------------------------------------------------------------

class NotebookPage:
    """One notebook open in the browser, with helpers to run its cells and read outputs.

    ``on_close``: called by :meth:`close` after the page is closed (e.g. to stop the
    Jupyter server)."""

    def __init__(self, page, base: str, app: str, root: Path, log: Path,
                 on_close: Optional[Callable[[], None]] = None, notebook: str = NOTEBOOK):
        self.page, self.base, self.app, self.root, self.log = page, base, app, root, log
        self.notebook = notebook
        self.path = f"/lab/tree/{notebook}" if app == "lab" else f"/notebooks/{notebook}"
        self._on_close = on_close
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
        """Load the notebook; return once its kernel is connected and idle."""
        self.page.goto(self.base + self.path)
        self.cells.first.wait_for(timeout=timeout * 1000)
        kernel = wait_kernel_connected(self.base, self.notebook, timeout, self.log)
        wait_kernel_idle(self.base, kernel, timeout)
        return self

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
        """Close the page, then call ``on_close`` (once)."""
        try:
            self.page.close()
        except Exception:
            pass
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


def open_notebook(stack: contextlib.ExitStack, ctx, app: str, root: Path, cfg: Path, url: str,
                  cells: List[str], timeout: float = 60) -> NotebookPage:
    """Write ``root/NOTEBOOK`` (:func:`setup_cell` for the chat server at ``url``, then
    ``cells``), run ``jupyter app`` over it and open it in a new page of ``ctx``: kernel
    connected, setup cell run. ``stack`` closes the page, then stops the server; so does
    the returned page's ``close()``."""
    write_notebook(root, [setup_cell(url)] + list(cells))
    base = stack.enter_context(jupyter(app, root, cfg, timeout=timeout))  # stopped last
    page = ctx.new_page()
    stack.callback(_close_quietly, page)                                 # closed first
    notebook = NotebookPage(page, base, app, root, Path(cfg) / "server.log", on_close=stack.close)
    notebook.open()
    notebook.run(0)
    return notebook


def _close_quietly(page) -> None:
    try:
        page.close()
    except Exception:
        pass
