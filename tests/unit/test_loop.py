"""The private loop's Job: what a front door waits on instead of a patched Future."""
from __future__ import annotations

import asyncio
import threading

import pytest

from opchat_magic.loop import LoopThread, block


@pytest.fixture(scope="module")
def loop():
    return LoopThread(name="opchat-test-loop")


def test_finished_means_unwound_not_just_cancelled(loop):
    unwound = threading.Event()
    started = threading.Event()
    release = threading.Event()

    async def stream():
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            # Closing a connection takes a moment: the job is not finished until this ran.
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)
            unwound.set()

    job = loop.submit(stream())
    assert started.wait(5)
    job.cancel()
    assert job.cancelled() and not job.finished.is_set()  # the future says cancelled at once...
    release.set()
    assert job.finished.wait(5) and unwound.is_set()  # ...finished only once the task has unwound


def test_a_job_cancelled_before_it_began_is_finished_and_never_runs(loop):
    ran = []
    holding, gate = threading.Event(), threading.Event()

    async def hold():  # blocks the private loop's thread, so the next job cannot begin
        holding.set()
        gate.wait(5)

    blocker = loop.submit(hold())
    assert holding.wait(5)
    try:
        async def never():
            ran.append(1)

        job = loop.submit(never())
        job.cancel()
    finally:
        gate.set()
    assert job.finished.wait(5) and blocker.finished.wait(5)
    assert ran == [] and job.cancelled()


def test_on_finished_callbacks_and_results(loop):
    calls = []

    async def answer():
        return 42

    job = loop.submit(answer())
    assert block(job, timeout=5) == 42
    job.on_finished(lambda: calls.append("late"))  # already finished: called at once
    assert calls == ["late"]

    async def boom():
        raise ValueError("typed")

    job = loop.submit(boom())
    with pytest.raises(ValueError, match="typed"):
        block(job, timeout=5)
    assert isinstance(job.exception(), ValueError)


def test_wait_finished_from_another_loop_without_blocking_it(loop):
    release = threading.Event()

    async def slow():
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)

    async def front_door():
        job = loop.submit(slow())
        await asyncio.sleep(0.05)
        job.cancel()
        ticks = 0

        async def ticker():  # this loop keeps running while it waits
            nonlocal ticks
            while not job.finished.is_set():
                ticks += 1
                if ticks == 3:
                    release.set()
                await asyncio.sleep(0.01)

        tick = asyncio.ensure_future(ticker())
        finished = await job.wait_finished(5)
        tick.cancel()
        return finished, ticks

    finished, ticks = asyncio.run(front_door())
    assert finished and ticks >= 3
