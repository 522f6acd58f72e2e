"""A load process for ``jetstandby bench e2e``: order-book commands through ``jetstandby.Client``.

``python -m jetstandby_bench.e2e_load --nats URL --journal J --out FILE [...]`` connects its
clients, pre-generates its commands, prints ``READY``, and starts on a ``GO`` line on stdin.
It stops after ``--duration`` seconds or on a ``STOP`` line, waits for the submissions in
flight, writes one ``(seq, sent, acknowledged)`` row of int64 per acknowledged command to
``--out`` (``time.time_ns()``, the clock every process on this machine shares) and prints
``DONE {json}``.

- ``--mode closed``: ``--concurrency`` tasks each submit, await the acknowledgement, and go
  again (the maximum sustained throughput). ``sent`` is when the task called ``submit``.
- ``--mode open``: commands are due at ``--rate`` per second whatever the answers do (no
  coordinated omission); ``sent`` is when a command was *due*, so a late sender counts
  against the latency it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from jetstandby.client import Client
from jetstandby.engines.orderbook import ACCOUNTS, MASS_CANCEL, generate
from jetstandby.engines.orderbook.schema import mass_cancel
from jetstandby.errors import SubmitError

#: Every this many commands, every account cancels all its orders: without it the books grow
#: by ~18,000 resting orders per million commands, and the standby's memory with them.
MASS_CANCEL_EVERY: Final = 20_000
#: The accounts take turns: one mass cancel every this many commands. All sixteen in a row
#: (2 to 5 ms of engine work each) stalled the primary and the standby alike for ~40 ms,
#: the largest lag spikes at 50% load; spread out, the books stay bounded just the same.
MASS_CANCEL_SPACING: Final = MASS_CANCEL_EVERY // len(ACCOUNTS)
POOL: Final = 200_000
OPEN_TICK: Final = 0.001


def bounded_orders(seed: int, count: int) -> Iterator[tuple[str, int, bytes]]:
    """The order-book load (:func:`generate`) with a mass cancel of every account every
    :data:`MASS_CANCEL_EVERY` commands, one account every :data:`MASS_CANCEL_SPACING`, so the
    books stay bounded however long it runs."""
    source = generate(seed, count)
    accounts = itertools.cycle(ACCOUNTS)
    for produced in range(count):
        if produced % MASS_CANCEL_SPACING == MASS_CANCEL_SPACING - 1:
            yield MASS_CANCEL, 1, mass_cancel(next(accounts))
        else:
            yield next(source)


class Load:
    def __init__(self, clients: list[Client], commands: list[tuple[str, int, bytes]], prefix: str):
        self.clients = clients
        self.commands = commands
        self.prefix = prefix
        self.rows = array("q")
        self.failed = 0
        self.retried = 0  # acknowledged after more than one try
        self.stop = asyncio.Event()
        self._next = itertools.count()

    async def one(self, client: Client, sent_ns: int) -> None:
        i = next(self._next)
        ctype, version, payload = self.commands[i % len(self.commands)]
        try:
            out = await client.submit(ctype, version, payload, request_id=f"{self.prefix}{i}")
        except SubmitError:
            self.failed += 1
            return
        self.rows.extend((out.seq, sent_ns, time.time_ns()))
        if out.attempts > 1:
            self.retried += 1

    async def closed(self, concurrency: int) -> None:
        async def worker(client: Client) -> None:
            while not self.stop.is_set():
                await self.one(client, time.time_ns())

        async with asyncio.TaskGroup() as tasks:
            for n in range(concurrency):
                tasks.create_task(worker(self.clients[n % len(self.clients)]))

    async def open(self, rate: float) -> None:
        start_ns, due = time.time_ns(), 0
        pending: set[asyncio.Task[None]] = set()
        while not self.stop.is_set():
            now = time.time_ns()
            while start_ns + due * 1e9 / rate <= now:
                client = self.clients[due % len(self.clients)]
                task = asyncio.create_task(self.one(client, start_ns + int(due * 1e9 / rate)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                due += 1
            await asyncio.sleep(OPEN_TICK)
        if pending:
            await asyncio.wait(pending)


async def stdin_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def wait_line(reader: asyncio.StreamReader, word: bytes) -> None:
    """Until a line ``word`` or the end of stdin (the bench went away: stop too)."""
    while (await reader.readline()).strip() not in (word, b""):
        pass


async def stop_after(load: Load, reader: asyncio.StreamReader, duration: float) -> None:
    """Stop the load after ``duration`` seconds (0: never) or at a STOP line."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wait_line(reader, b"STOP"), duration if duration > 0 else None)
    load.stop.set()


async def main(args: argparse.Namespace) -> None:
    count = POOL if args.mode == "closed" or args.duration <= 0 else int(args.rate * args.duration)
    commands = list(bounded_orders(args.seed, max(1, min(count + 1, POOL))))
    clients = [
        await Client.connect(args.nats, args.journal, request_timeout=args.request_timeout)
        for _ in range(args.connections)
    ]
    load = Load(clients, commands, args.prefix)
    reader = await stdin_reader()
    print("READY", flush=True)
    await wait_line(reader, b"GO")
    started = time.time_ns()
    run = load.closed(args.concurrency) if args.mode == "closed" else load.open(args.rate)
    await asyncio.gather(run, stop_after(load, reader, args.duration))
    finished = time.time_ns()
    for client in clients:
        await client.aclose()
    await asyncio.to_thread(Path(args.out).write_bytes, load.rows.tobytes())
    summary = {
        "acked": len(load.rows) // 3,
        "failed": load.failed,
        "retried": load.retried,
        "started_ns": started,
        "finished_ns": finished,
    }
    print("DONE " + json.dumps(summary), flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jetstandby_bench.e2e_load")
    parser.add_argument("--nats", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=10.0, help="0: until STOP")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prefix", default="r")
    parser.add_argument("--request-timeout", type=float, default=0.5)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
