"""Stopping the tasks an object owns, without losing its caller's cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` and the calling task itself are left out) and return once
    every one has finished; re-raise the first that failed with something else.

    The usual ``task.cancel(); with suppress(CancelledError): await task`` also swallows a
    cancellation of the *calling* task that arrives while it waits: a node stopped while
    its replay is closing a subscription would run on, reconnecting, and its ``run()`` would
    never return. Here the caller's own cancellation is re-raised once the tasks are done.
    """
    current = asyncio.current_task()
    owned = [task for task in tasks if task is not None and task is not current]
    for task in owned:
        task.cancel()
    cancelled = False
    pending = {task for task in owned if not task.done()}
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            cancelled = True  # the tasks were told to stop already: wait for them, then raise
        pending = {task for task in pending if not task.done()}
    if cancelled:
        raise asyncio.CancelledError
    failures = [task.exception() for task in owned if not task.cancelled()]
    first = next((exc for exc in failures if exc is not None), None)
    if first is not None:
        raise first
