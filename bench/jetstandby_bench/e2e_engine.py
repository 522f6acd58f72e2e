"""A bench-only order-book engine that records when each command is applied.

Nodes of ``jetstandby bench e2e`` run the real ``jetstandby run`` with
``--engine jetstandby_bench.e2e_engine:RecordingOrderBook``: the same Node, replay loop and
primary as production, and the same order book, plus what the bench needs to observe, all
switched by environment variables (no change to ``src/``):

- ``JSB_E2E_APPLY_LOG=path``: record ``(seq, apply time, primary stamp)`` of every applied
  command (``time.time_ns()``, the clock every process on this machine shares) into room
  for ``JSB_E2E_APPLY_CAP`` rows, written to ``path`` at exit;
- ``JSB_E2E_RSS_LOG=path``: every ``JSB_E2E_RSS_EVERY`` applies, note ``(applies, time, RSS)``
  of this process; written to ``path`` at exit, and as soon as ``JSB_E2E_EXPECT`` commands
  have been applied (so the bench learns replay finished without polling the node);
- ``JSB_E2E_GC_LOG=path``: record ``(generation, end time, duration)`` of every garbage
  collection in this process (``gc.callbacks``), written to ``path`` at exit;
- ``JSB_E2E_PROFILE=path``: run the process under cProfile and dump the stats at exit.

Files are written to ``path + ".tmp"`` and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import atexit
import gc
import mmap
import os
import time
from array import array
from typing import Final

from jetstandby.engine import Command
from jetstandby.engines.orderbook import OrderBookEngine

APPLY_COLUMNS: Final = 3  # seq, apply time (ns), the primary's stamp (ns)
RSS_COLUMNS: Final = 3  # applies, time (ns), RSS (bytes)
DEFAULT_CAP: Final = 1_000_000
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from ``/proc/<pid>/statm`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def write_atomically(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


class _Recorder:
    """One per process, whichever engine instance applies (a node may build several: one to
    bootstrap, one to replay into), written once at exit."""

    def __init__(self) -> None:
        self.apply_log = os.environ.get("JSB_E2E_APPLY_LOG")
        self.rss_log = os.environ.get("JSB_E2E_RSS_LOG")
        self.rss_every = int(os.environ.get("JSB_E2E_RSS_EVERY", "50000"))
        self.expect = int(os.environ.get("JSB_E2E_EXPECT", "0"))
        self.applies = 0
        self.cap = (
            int(os.environ.get("JSB_E2E_APPLY_CAP", str(DEFAULT_CAP))) if self.apply_log else 0
        )
        # Anonymous memory, resident only as rows are written: a filled array of the whole
        # capacity (72 MB at 3M rows) made the node's heap look that much bigger, and every
        # fork of a snapshot capture copy that many more page-table entries.
        self._rows_map = mmap.mmap(-1, 8 * APPLY_COLUMNS * max(1, self.cap))
        self.rows = memoryview(self._rows_map).cast("q")
        self.rss = array("q")
        self.note_rss()
        self.gc_log = os.environ.get("JSB_E2E_GC_LOG")
        self.collections = array("q")
        self._gc_started = 0
        if self.gc_log:
            gc.callbacks.append(self._on_gc)
        profile_path = os.environ.get("JSB_E2E_PROFILE")
        if profile_path:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            atexit.register(_dump_profile, profiler, profile_path)
        atexit.register(self.dump)

    def applied(self, command: Command) -> None:
        n = self.applies
        self.applies = n + 1
        if n < self.cap:
            rows, i = self.rows, n * APPLY_COLUMNS
            rows[i] = command.seq
            rows[i + 1] = time.time_ns()
            rows[i + 2] = command.timestamp_ns
        if self.rss_log and ((n + 1) % self.rss_every == 0 or n + 1 == self.expect):
            self.note_rss()
            if n + 1 == self.expect:
                self.dump()

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter_ns()
        else:
            duration = time.perf_counter_ns() - self._gc_started
            self.collections.extend((info["generation"], time.time_ns(), duration))

    def note_rss(self) -> None:
        self.rss.extend((self.applies, time.time_ns(), rss_bytes()))

    def dump(self) -> None:
        """Write the records (idempotent: a later dump replaces an earlier one)."""
        if self.apply_log:
            used = min(self.applies, self.cap) * APPLY_COLUMNS
            write_atomically(self.apply_log, self.rows[:used].tobytes())
        if self.rss_log:
            write_atomically(self.rss_log, self.rss.tobytes())
        if self.gc_log:
            write_atomically(self.gc_log, self.collections.tobytes())


_recorder: _Recorder | None = None


class RecordingOrderBook(OrderBookEngine):
    """:class:`OrderBookEngine` plus the records described in the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        global _recorder
        if _recorder is None:
            _recorder = _Recorder()
        self._recorder = _recorder

    def apply(self, command: Command) -> bytes:
        result = super().apply(command)
        self._recorder.applied(command)
        return result


def _dump_profile(profiler: object, path: str) -> None:
    import cProfile

    assert isinstance(profiler, cProfile.Profile)
    profiler.disable()
    profiler.dump_stats(path)
