"""The processes of ``jetstandby bench e2e``: nodes, load processes, and what /proc says of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from jetstandby.procs import NodeProcess

ENGINE: Final = "jetstandby_bench.e2e_engine:RecordingOrderBook"
_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def run_queue_seconds(pid: int | None) -> float:
    """Seconds the threads of a process have spent runnable but waiting for a core
    (``/proc/<pid>/task/*/schedstat``, second field; 0 if it is gone)."""
    if pid is None:
        return 0.0
    waited = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as stat:
                waited += int(stat.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waited / 1e9


def renice(pid: int, nice: int) -> None:
    """Set the scheduling priority of every thread of ``pid`` (Linux keeps one per thread;
    threads started later inherit their creator's). Below 0 needs root or CAP_SYS_NICE:
    :class:`PermissionError` says so."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(task), nice)
        except ProcessLookupError:
            continue  # that thread has just ended
        except PermissionError:
            raise PermissionError(
                f"cannot set nice {nice} on pid {pid}: a value below 0 needs root or CAP_SYS_NICE"
            ) from None


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine spent busy since boot (not idle, not iowait)."""
    with open("/proc/stat", "rb") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICKS


class CpuMeter:
    """CPU used by named processes between :meth:`start` and :meth:`stop`, and by the whole
    machine (``machine``; ``others`` is what processes not named here used: on a shared
    machine, the share this run did not get). :attr:`waited` is, per process, the
    milliseconds per second it was ready to run but waited for a core."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}
        self._waits: dict[str, float] = {}
        self._wall = 0.0
        self.waited: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._before["machine"] = machine_busy_seconds()
        self._waits = {name: run_queue_seconds(pid) for name, pid in self.pids.items()}
        self._wall = asyncio.get_running_loop().time()

    def stop(self) -> dict[str, float]:
        """Cores each process used on average (1.0 = a whole core)."""
        wall = max(asyncio.get_running_loop().time() - self._wall, 1e-9)
        used = {
            name: round((cpu_seconds(pid) - self._before[name]) / wall, 2)
            for name, pid in self.pids.items()
        }
        machine = round((machine_busy_seconds() - self._before["machine"]) / wall, 2)
        self.waited = {
            # at least 0: a thread that exited meanwhile took its count along
            name: round(max(0.0, run_queue_seconds(pid) - self._waits[name]) / wall * 1000, 1)
            for name, pid in self.pids.items()
        }
        return {**used, "machine": machine, "others": round(machine - sum(used.values()), 2)}


async def start_node(
    workdir: Path,
    node_id: str,
    url: str,
    *,
    token: str,
    journal: str,
    role: str,
    replicas: int,
    env: dict[str, str] | None = None,
) -> NodeProcess:
    """A ``jetstandby run`` process with the recording order book (see e2e_engine)."""
    return await NodeProcess.start(
        workdir,
        node_id,
        url,
        token=token,
        journal=journal,
        role=role,
        engine=ENGINE,
        env={"JETSTANDBY_REPLICAS": str(replicas), **(env or {})},
        ready_within=60,
    )


async def stop_node(node: NodeProcess) -> None:
    """SIGTERM (the node writes its records at exit) and wait."""
    await node.close()


class LoadProcess:
    """One ``python -m jetstandby_bench.e2e_load`` child: READY, GO, (STOP), DONE."""

    def __init__(self, proc: asyncio.subprocess.Process, out: Path) -> None:
        self.proc, self.out = proc, out
        self.summary: dict[str, Any] = {}

    @classmethod
    async def start(
        cls, workdir: Path, name: str, url: str, journal: str, *args: str
    ) -> LoadProcess:
        out = workdir / f"{name}.rows"
        log = workdir / f"{name}.log"
        argv = [
            sys.executable,
            "-m",
            "jetstandby_bench.e2e_load",
            "--nats",
            url,
            "--journal",
            journal,
            "--out",
            str(out),
            "--prefix",
            f"{name}-",
            *args,
        ]
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr
            )
        load = cls(proc, out)
        try:
            await asyncio.wait_for(load._expect("READY"), 120)
        except BaseException:
            await load.kill()
            raise
        return load

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _expect(self, word: str) -> str:
        assert self.proc.stdout is not None
        while True:
            line = (await self.proc.stdout.readline()).decode()
            if not line:
                await self.proc.wait()
                raise RuntimeError(f"load process exited ({self.proc.returncode}) before {word}")
            if line.startswith(word):
                return line[len(word) :].strip()

    async def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            self.proc.stdin.write(word.encode() + b"\n")
            await self.proc.stdin.drain()

    async def finish(self, timeout: float = 600) -> np.ndarray[Any, Any]:
        """Wait for DONE; the rows ``(seq, sent_ns, acked_ns)`` as an ``(n, 3)`` int64 array.

        Generous: beyond capacity, an open-loop process holds hundreds of thousands of
        submissions that retry until their deadline, on a starved core (over 120 s)."""
        self.summary = json.loads(await asyncio.wait_for(self._expect("DONE"), timeout))
        await self.proc.wait()
        data = await asyncio.to_thread(self.out.read_bytes)
        return np.frombuffer(data, dtype=np.int64).reshape(-1, 3)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def run_loads(
    loads: Sequence[LoadProcess], *, stop: bool = False, timeout: float = 600
) -> np.ndarray[Any, Any]:
    """GO to all, (STOP if asked,) and the rows of all of them together. If one fails or
    does not finish within ``timeout``, all are killed: left running, a load process whose
    server is gone retries its submissions for a long time (one overload run left seven,
    1 to 2 GB each, taking most of a core for an hour)."""
    try:
        for load in loads:
            await load.send("GO")
        if stop:
            for load in loads:
                await load.send("STOP")
        rows = [await load.finish(timeout) for load in loads]
    except BaseException:
        for load in loads:
            await load.kill()
        raise
    return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)


def read_applies(path: Path, standby: NodeProcess) -> np.ndarray[Any, Any]:
    """The stopped standby's apply record. It is written as the process exits: missing, every
    command would count as not applied, so say why instead."""
    if not path.exists():
        raise RuntimeError(
            f"the standby's apply record {path} was not written: it exited with "
            f"{standby.proc.returncode} (-9: not within 10 s of SIGTERM); see {standby.log}"
        )
    return read_rows(path, 3)


def read_rows(path: Path, columns: int) -> np.ndarray[Any, Any]:
    if not path.exists():
        return np.zeros((0, columns), dtype=np.int64)
    return np.fromfile(path, dtype=np.int64).reshape(-1, columns)
