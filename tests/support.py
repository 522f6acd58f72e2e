"""Helpers shared by the tests: envelopes, recording handlers, and log waiting without sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from jetstandby import wire
from jetstandby.wire import Envelope


def envelope(seq: int, *, epoch: int = 1, payload: bytes = b"x", ts: int | None = None) -> Envelope:
    return Envelope(1, seq, epoch, ts if ts is not None else 1_000 + seq, "Put", 1, payload)


def body(seq: int, **kw: object) -> bytes:
    return wire.encode(envelope(seq, **kw))  # type: ignore[arg-type]


class Recorder:
    """A replay handler that records seqs and can be told to fail at one."""

    def __init__(self, *, fail_at: int | None = None) -> None:
        self.seqs: list[int] = []
        self.fail_at = fail_at

    def handle_command(self, command: Envelope) -> None:
        if command.seq == self.fail_at:
            raise RuntimeError(f"engine refused seq {command.seq}")
        self.seqs.append(command.seq)


class LogWaiter(logging.Handler):
    """Records log messages and lets a test await one, instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._waiters: list[tuple[str, asyncio.Future[str]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.messages.append(text)
        for needle, future in self._waiters:
            if needle in text and not future.done():
                future.set_result(text)

    def seen(self, needle: str) -> list[str]:
        return [m for m in self.messages if needle in m]

    async def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        for text in self.messages:
            if needle in text:
                return text
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append((needle, future))
        async with asyncio.timeout(timeout):
            return await future


@contextmanager
def watch_logs(name: str = "jetstandby") -> Iterator[LogWaiter]:
    waiter = LogWaiter()
    logger = logging.getLogger(name)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(waiter)
    try:
        yield waiter
    finally:
        logger.removeHandler(waiter)
        logger.setLevel(old_level)
