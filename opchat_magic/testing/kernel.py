"""Drive a real Jupyter kernel: run code, collect every iopub message, count bytes.

Used by the kernel tests and by ``benchmarks/render_cost.py`` (which is why it
lives in the package, not under tests/): both need the same, exact accounting
of what a reply costs the frontend.
"""
from __future__ import annotations

import json
import os
import queue
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


def message_bytes(msg: dict) -> int:
    """Bytes of a message as it crosses the wire (the four JSON frames)."""
    total = 0
    for part in ("header", "parent_header", "metadata", "content"):
        total += len(json.dumps(msg.get(part, {}), default=str, separators=(",", ":")).encode())
    for buf in msg.get("buffers") or ():
        total += len(buf)
    return total


@dataclass
class Execution:
    """What one execute request produced."""

    msg_id: str
    reply: Optional[dict] = None
    messages: list = field(default_factory=list)  # every iopub message for this request, in order
    started: float = field(default_factory=time.perf_counter)
    finished: Optional[float] = None

    @property
    def status(self) -> str:
        return (self.reply or {}).get("content", {}).get("status", "")

    @property
    def error(self) -> Optional[dict]:
        for m in self.messages:
            if m["msg_type"] == "error":
                return m["content"]
        # IPython reports a UsageError on stderr, with no iopub error message: the
        # shell reply still names it.
        content = (self.reply or {}).get("content", {})
        if content.get("status") == "error":
            return {"ename": content.get("ename"), "evalue": content.get("evalue", ""),
                    "traceback": content.get("traceback") or [self.stderr]}
        return None

    def of_type(self, *types: str) -> list:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def bytes(self) -> int:
        return sum(message_bytes(m) for m in self.messages)

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stderr")

    def final_outputs(self) -> list:
        """The outputs a frontend would hold at the end: display updates applied, as nbformat does."""
        outputs, by_id = [], {}
        for m in self.messages:
            kind, content = m["msg_type"], m["content"]
            if kind in ("display_data", "execute_result"):
                out = {"output_type": kind, "data": content.get("data", {})}
                outputs.append(out)
                display_id = content.get("transient", {}).get("display_id")
                if display_id:
                    by_id.setdefault(display_id, []).append(out)
            elif kind == "update_display_data":
                for out in by_id.get(content.get("transient", {}).get("display_id"), []):
                    out["data"] = content.get("data", {})
            elif kind == "stream":
                outputs.append({"output_type": "stream", "name": content["name"], "text": content["text"]})
            elif kind == "error":
                outputs.append({"output_type": "error", **content})
            elif kind == "clear_output":
                outputs.clear()
        return outputs

    def shows(self, expected: str) -> bool:
        """The Markdown outputs (one per block) hold ``expected``, whitespace aside."""
        return " ".join(expected.split()) in " ".join(self.markdown().split())

    def markdown(self) -> str:
        """All text/markdown of the final outputs, in order."""
        return "\n".join(o["data"]["text/markdown"] for o in self.final_outputs()
                         if "data" in o and "text/markdown" in o["data"])


class Kernel:
    """A python3 kernel in a subprocess, isolated from the user's config and history."""

    def __init__(self, env: Optional[dict] = None, cwd: Optional[str] = None, startup_timeout: float = 60):
        from jupyter_client import KernelManager

        self._tmp = tempfile.TemporaryDirectory(prefix="opchat-kernel-")
        base = dict(os.environ)
        base.setdefault("IPYTHONDIR", os.path.join(self._tmp.name, "ipython"))
        base.setdefault("OPCHAT_HISTORY_DB", os.path.join(self._tmp.name, "history.sqlite3"))
        base.update(env or {})
        self.env = base
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=base, cwd=cwd or self._tmp.name)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=startup_timeout)

    # -- running code ------------------------------------------------------
    def submit(self, code: str) -> Execution:
        return Execution(self.kc.execute(code, allow_stdin=False))

    def collect(self, execution: Execution, timeout: float = 60,
                on_message: Optional[Callable[[dict], None]] = None) -> Execution:
        """Read iopub until the kernel is idle for this request, then its shell reply."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"kernel did not finish within {timeout} s")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if msg.get("parent_header", {}).get("msg_id") != execution.msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"]["execution_state"] == "idle":
                    break
                continue
            msg["received"] = time.perf_counter()
            execution.messages.append(msg)
            if on_message is not None:
                on_message(msg)
        execution.finished = time.perf_counter()
        while time.monotonic() < deadline:
            try:
                reply = self.kc.get_shell_msg(timeout=1.0)
            except queue.Empty:
                continue
            if reply.get("parent_header", {}).get("msg_id") == execution.msg_id:
                execution.reply = reply
                break
        return execution

    def run(self, code: str, timeout: float = 60, check: bool = True, **kw) -> Execution:
        execution = self.collect(self.submit(code), timeout=timeout, **kw)
        if check and execution.status != "ok":
            err = execution.error or {}
            raise AssertionError(f"cell failed: {err.get('ename')}: {err.get('evalue')}\n"
                                 + "\n".join(err.get("traceback", [])) + execution.stderr)
        return execution

    def value(self, expression: str, timeout: float = 30):
        """Evaluate an expression in the kernel and return it, via JSON."""
        ex = self.run(f"import json as _j; print(_j.dumps({expression}))", timeout=timeout)
        return json.loads(ex.stdout.strip().splitlines()[-1])

    # -- lifecycle ---------------------------------------------------------
    def interrupt(self) -> None:
        self.km.interrupt_kernel()

    def restart(self, timeout: float = 60) -> None:
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=timeout)
        # drain whatever the restart left on iopub
        while True:
            try:
                self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                break

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
            self.km.shutdown_kernel(now=True)
        finally:
            self._tmp.cleanup()

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
