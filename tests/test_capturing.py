"""Snapshot capture (jetstandby.snapshots.capturing): in a forked child or in a thread."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time

import pytest

from jetstandby import wire
from jetstandby.engines.kv import KeyValueEngine, put
from jetstandby.errors import SnapshotError
from jetstandby.snapshots import capturing
from jetstandby.snapshots.capturing import Capture, capture
from jetstandby.state import ReplicatedState, marker_envelope

HOW: tuple[Capture, ...] = ("fork", "thread")


def command(seq: int) -> wire.Envelope:
    return wire.Envelope(1, seq, 1, 1000 + seq, "Put", 1, put(f"k{seq}", "v"), f"r{seq}")


def state_through(seq: int, engine: KeyValueEngine | None = None) -> ReplicatedState:
    state = ReplicatedState(engine or KeyValueEngine())
    state.apply(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0))
    for n in range(2, seq + 1):
        state.apply(command(n))
    return state


@pytest.mark.parametrize("how", HOW)
async def test_a_capture_is_of_the_state_when_it_was_called(how: Capture) -> None:
    """Replay goes on while the capture is encoded: commands applied meanwhile are not in it.
    The snapshot is several times a pipe's buffer (64 KiB), so the child must be read while
    it writes."""
    state = state_through(5_000)
    expected, digest = state.snapshot(), state.digest().hex()
    task = asyncio.create_task(capture(state, how, deadline=60))
    await asyncio.sleep(0)  # the task runs up to its first await: forked, or frozen
    for n in range(5_001, 5_100):
        state.apply(command(n))
    captured = await task
    assert len(captured.data) > 2 * 65536
    assert captured.data == expected and captured.digest == digest
    assert captured.data != state.snapshot()
    restored = ReplicatedState(KeyValueEngine())
    restored.restore(captured.data)
    assert restored.last_seq == 5_000 and restored.digest().hex() == digest
    assert captured.paused_s >= 0


class Unsnapshottable(KeyValueEngine):
    def snapshot(self) -> bytes:
        raise RuntimeError("no snapshot today")


class DiesInSnapshot(KeyValueEngine):
    """An engine that kills the process taking its snapshot: in the fork, the child."""

    def snapshot(self) -> bytes:
        os._exit(3)


class SlowToSnapshot(KeyValueEngine):
    """An engine whose snapshot takes ten minutes: in the fork, the child's."""

    def snapshot(self) -> bytes:
        time.sleep(600)
        return super().snapshot()


def children() -> set[int]:
    """This process's child processes, from /proc (every thread's list)."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as listed:
            found.update(int(pid) for pid in listed.read().split())
    return found


class ReportsDescriptors(KeyValueEngine):
    """Its snapshot is the list of descriptors open in the process that takes it."""

    reported: list[str]

    def snapshot(self) -> bytes:
        return " ".join(os.listdir("/proc/self/fd")).encode()

    def restore(self, data: bytes) -> None:
        self.reported = data.decode().split()


async def test_the_child_holds_no_descriptor_of_the_node() -> None:
    """The node's listening socket (its admin port), its NATS sockets, its event loop: the
    child closes every descriptor but its end of the pipe before it encodes."""
    engine = ReportsDescriptors()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        captured = await capture(state_through(5, ReportsDescriptors()), "fork", deadline=60)
        restored = ReplicatedState(engine)
        restored.restore(captured.data)
        listening = str(listener.fileno())
        assert listening in os.listdir("/proc/self/fd")  # the parent's are still there
    # the pipe's end, and the one listdir opened to read /proc/self/fd
    assert len(engine.reported) == 2 and listening not in engine.reported


async def test_a_child_past_its_deadline_is_killed_and_the_capture_fails() -> None:
    before = children()
    with pytest.raises(SnapshotError, match=r"did not finish within 0.5 s") as info:
        await capture(state_through(5, SlowToSnapshot()), "fork", deadline=0.5)
    assert info.value.reason == "capture"
    assert children() == before


@pytest.mark.timeout(20)  # without the kill, the cancellation waits out the child's sleep
async def test_cancelling_a_capture_kills_and_reaps_its_child() -> None:
    before = children()
    task = asyncio.create_task(capture(state_through(5, SlowToSnapshot()), "fork", deadline=60))
    await asyncio.sleep(0)  # forked: the child is in snapshot() for ten minutes
    assert len(children() - before) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert children() == before


async def test_a_failed_fork_is_a_capture_error_that_names_the_way_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_fork() -> int:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(os, "fork", no_fork)
    with pytest.raises(SnapshotError, match=r"could not fork.*snapshot_capture = thread") as info:
        await capture(state_through(5), "fork", deadline=60)
    assert info.value.reason == "capture"


async def test_an_engine_failing_in_the_child_is_a_capture_error_naming_it() -> None:
    with pytest.raises(SnapshotError, match="no snapshot today") as info:
        await capture(state_through(5, Unsnapshottable()), "fork", deadline=60)
    assert info.value.reason == "capture"


async def test_a_child_that_dies_is_a_failed_capture_never_a_short_snapshot() -> None:
    with pytest.raises(SnapshotError, match="exit status 0x300") as info:
        await capture(state_through(5, DiesInSnapshot()), "fork", deadline=60)
    assert info.value.reason == "capture"


@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        (b"short", 0, "wrote 5 of 10 bytes"),  # the child died while writing
        (b"0123456789", 9, "exit status 0x9"),  # all there, but the child did not exit 0
    ],
)
def test_what_the_child_announced_is_what_a_capture_needs(
    data: bytes, status: int, needle: str
) -> None:
    head = capturing._HEADER.pack(0, 4, 10) + b"beef"
    assert capturing._check(head, b"0123456789", 0) == "beef"
    with pytest.raises(SnapshotError, match=needle):
        capturing._check(head, data, status)
