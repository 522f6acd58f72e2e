"""cancel_and_wait: an owner stops its tasks without losing its own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from jetstandby.aio import cancel_and_wait


async def test_cancels_and_waits_for_each_task() -> None:
    blocked = [asyncio.create_task(asyncio.Event().wait()) for _ in range(3)]
    await cancel_and_wait(*blocked, None)
    assert all(task.cancelled() for task in blocked)


async def test_the_callers_own_cancellation_is_raised_once_the_tasks_are_done() -> None:
    dying, release = asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            dying.set()
            await release.wait()  # cleanup that takes a while
            raise

    child = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)  # let the child start
    owner = asyncio.create_task(cancel_and_wait(child))
    await dying.wait()
    owner.cancel()  # e.g. the node is stopped while closing a subscription
    await asyncio.sleep(0)  # the owner takes the cancellation ...
    assert not owner.done()  # ... and still waits for its task
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert child.cancelled()


async def test_a_task_that_failed_is_reraised_and_the_calling_task_is_skipped() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    failed = asyncio.create_task(fail())
    await asyncio.wait([failed])
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(failed, asyncio.current_task())
