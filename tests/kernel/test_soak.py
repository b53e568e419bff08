"""The soak benchmark (benchmarks/soak.py) at a small scale: no leak, no cross-talk.

100 sequential ``%%opchat`` turns in one real kernel, sampled from /proc
every 25: open fds and sockets must stay within a small bound of the first
sample; then 20 panel-style turns at once on 20 threads, twice, each thread
holding exactly its own history. ``python benchmarks/soak.py`` is the full run
(1,000 turns, 50 concurrent).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from opchat_magic.server import LocalServer

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="samples the kernel from /proc"),
]

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("opchat_soak_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(soak, tmp_path_factory):
    """One kernel, one server: the sequential run, then the concurrent one."""
    db = str(tmp_path_factory.mktemp("soak") / "history.sqlite3")
    with LocalServer(delay=0) as server:
        kernel = soak.start_kernel(server, db, max_history=20)
        try:
            seq = soak.sequential(kernel, turns=100, every=25)
            before = soak.sample(seq["pid"])
            conc = soak.concurrent(kernel, 20)
            after = soak.sample(seq["pid"])
            requests = server.stats.requests.get("submit", 0)
        finally:
            kernel.shutdown()
    print("\n" + soak.table(seq["samples"]))
    print(f"concurrent: {conc}\nbefore {before}\nafter {after}")
    return {"seq": seq, "conc": conc, "before": before, "after": after, "requests": requests}


def test_sequential_turns_do_not_leak_descriptors(run):
    samples = run["seq"]["samples"]
    assert [s["turn"] for s in samples] == [1, 25, 50, 75, 100]
    first = samples[0]
    for s in samples[1:]:
        # one turn's connection may still be closing when we look; nothing more
        assert s["fds"] <= first["fds"] + 4, samples
        assert s["sockets"] <= first["sockets"] + 2, samples
        assert s["threads"] <= first["threads"] + 2, samples
    # 100 turns should cost far less than a MiB each; a leak of the replies would show
    assert samples[-1]["rss_kib"] - samples[1]["rss_kib"] < 30 * 1024, samples
    # the whole history is kept (storage keeps all; max_history trims only what is sent)
    assert run["seq"]["messages_kept"] == 200


def test_concurrent_panel_turns_keep_their_own_history(run):
    conc = run["conc"]
    assert conc["errors"] == []
    assert conc["crosstalk_threads"] == 0, conc["crosstalk"]
    assert conc["peak_overlap"] >= 10, f"the streams barely overlapped: {conc}"
    assert run["requests"] == 100 + 2 * 20


def test_concurrency_leaves_nothing_open(run):
    before, after = run["before"], run["after"]
    assert after["sockets"] <= before["sockets"] + 2, (before, after)
    assert after["fds"] <= before["fds"] + 4, (before, after)
    # the private loop's resolver pool may grow to its cap (min(32, cpus + 4)); never per stream
    assert after["threads"] <= before["threads"] + min(32, (os.cpu_count() or 1) + 4), (before, after)
