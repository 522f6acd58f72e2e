"""Capturing a standby's state for a snapshot while replay goes on.

Two ways, chosen by :attr:`SnapshotSettings.capture <jetstandby.config.SnapshotSettings>`:

``fork`` (the default where :func:`os.fork` exists), as Redis' ``BGSAVE``: the node forks,
and the child, holding a copy-on-write image of the whole process as of that instant,
encodes the state and its digest, writes them to a pipe and leaves with :func:`os._exit`.
Replay stops for the fork itself (9.6 ms for a standby holding 1M order-book commands in
``bench bootstrap``), then pays a page fault for each page it writes while the child lives.
The child runs on another core, so its encoding competes neither for the event loop nor
for the parent's GIL.

``thread``: replay stops while the state is frozen (the engine's ``snapshot()``, the digest
and a copy of the exactly-once record: 99 ms in the same bench), and the encoding runs in a
thread. msgspec holds the GIL while it encodes, so replay waits for most of that too.

The child touches nothing the parent owns: it closes every inherited descriptor but its
pipe (the admin listener, the NATS sockets), takes the default action on SIGTERM and
SIGINT, and uses no event loop and no logging. Any failure in it comes back over the pipe
as text; a child that dies without writing all it announced is a failed capture, never a
short snapshot. A capture that is cancelled, or whose child outlives ``deadline``, kills
the child and reaps it before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import signal
import struct
import time
from dataclasses import dataclass
from typing import Final

from jetstandby.config import Capture
from jetstandby.errors import SnapshotError
from jetstandby.snapshots.meta import Refusal
from jetstandby.state import ReplicatedState

#: status (0 ok, 1 failed), then the digest's (or the error's) length, then the data's.
_HEADER: Final = struct.Struct(">BIQ")


@dataclass(frozen=True, slots=True)
class Captured:
    """A state's snapshot bytes and engine digest (hex), and how long replay was stopped."""

    data: bytes
    digest: str
    paused_s: float


async def capture(state: ReplicatedState, how: Capture, *, deadline: float) -> Captured:
    """The snapshot of ``state`` as it stands now. Call with no await between reading the
    state's position and this: the capture is of the state at the moment of the call.
    ``deadline``: seconds a forked child may take (a hung engine must not hold a node's
    snapshots forever)."""
    if how == "fork":
        return await _in_child(state, deadline)
    started = time.monotonic()
    encode, digest = state.freeze(), state.digest().hex()
    paused = time.monotonic() - started
    return Captured(await asyncio.to_thread(encode), digest, paused)


async def _in_child(state: ReplicatedState, deadline: float) -> Captured:
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise _failed(f"could not fork ({exc}); snapshot_capture = thread does not") from exc
    if pid == 0:  # the child: never returns
        _child(state, write_fd)
    paused = time.monotonic() - started
    os.close(write_fd)
    # One thread owns the pipe and the child from here on: it reads to the end and reaps.
    reader = asyncio.ensure_future(asyncio.to_thread(_read_and_reap, read_fd, pid))
    try:
        async with asyncio.timeout(deadline):
            head, data, status = await asyncio.shield(reader)
    except (asyncio.CancelledError, TimeoutError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the reader then sees the end of the pipe
        with contextlib.suppress(Exception):
            await reader  # reaped before the cancellation goes on
        if isinstance(exc, TimeoutError):
            raise _failed(f"did not finish within {deadline:g} s and was killed") from None
        raise
    except OSError as exc:
        raise _failed(f"could not be read ({exc!r})") from exc
    return Captured(data, _check(head, data, status), paused)


def _child(state: ReplicatedState, write_fd: int) -> None:
    """Encode, write, exit. ``os._exit`` in every case: the parent's event loop, its
    ``finally`` blocks and its ``atexit`` hooks must never run in here."""
    try:
        os.closerange(0, write_fd)  # the admin listener, the NATS sockets, the pipe's end
        os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
        signal.set_wakeup_fd(-1)  # a signal to the child must not wake the parent's loop
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)  # not the parent's (asyncio's) handlers
        gc.disable()  # collections would only touch (and so copy) the parent's pages
        try:
            data = state.snapshot()
            text = state.digest().hex().encode()
            parts = [_HEADER.pack(0, len(text), len(data)), text, data]
        except BaseException as exc:  # reported to the parent as text
            text = repr(exc).encode()
            parts = [_HEADER.pack(1, len(text), 0), text]
        with open(write_fd, "wb") as out:
            for part in parts:
                out.write(part)
    finally:
        os._exit(0)


def _read_and_reap(read_fd: int, pid: int) -> tuple[bytes, bytes, int]:
    """The child's header and text, its data, and its exit status. The data is read to the
    end of the pipe into one growing buffer (no list of chunks to join: a 16 MB snapshot
    costs one buffer, not two), so the child never blocks on a full pipe before the reap."""
    try:
        with open(read_fd, "rb", buffering=0) as pipe:
            head = _read_exactly(pipe, _HEADER.size)
            if len(head) == _HEADER.size:
                head += _read_exactly(pipe, _HEADER.unpack(head)[1])
            data = pipe.readall()
    finally:
        _, status = os.waitpid(pid, 0)  # never a zombie, whatever the read did
    return head, data, status


def _read_exactly(pipe: io.RawIOBase, size: int) -> bytes:
    """``size`` bytes, or fewer at the end of the pipe (a pipe read may return less)."""
    parts = []
    while size > 0 and (part := pipe.read(size)):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _failed(problem: str) -> SnapshotError:
    return SnapshotError(f"snapshot capture in a child process {problem}", reason=Refusal.CAPTURE)


def _check(head: bytes, data: bytes, status: int) -> str:
    """The digest the child sent, or :class:`SnapshotError` if it failed or fell short."""
    if len(head) < _HEADER.size:
        raise _failed(f"ended before its header (exit status {status:#x})")
    code, _, data_len = _HEADER.unpack_from(head)
    text = head[_HEADER.size :].decode(errors="replace")
    if code != 0:
        raise _failed(f"failed: the engine raised {text}")
    if len(data) != data_len or status != 0:
        raise _failed(f"wrote {len(data)} of {data_len} bytes (exit status {status:#x})")
    return text
