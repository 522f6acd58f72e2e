"""``jetstandby bench journal``: how fast a primary journals commands.

Variants, each into a fresh stream with the journal's settings, interleaved run by run, under
both durability settings (a server that acknowledges before fsync, and one with
``sync_interval: always``):

- ``raw``: nats-py ``publish_async`` with a window of 1024 (no fencing headers; its hang on
  server errors, nats-io/nats.py#985, does not matter when everything succeeds);
- ``jetstandby``: ``CommandJournal.append`` with the id-chain fencing headers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import nats

from jetstandby import CommandJournal, JournalSettings, Position, connect, ensure_stream, wire
from jetstandby.journal.stream import required_config
from jetstandby_bench.common import Variant, embedded_server, envelope, ratio, report

TARGET_VS_RAW = 1.5
WINDOW = 1024


@dataclass(frozen=True)
class JournalBench:
    count: int = 200_000
    fsync_count: int = 20_000
    runs: int = 3
    as_json: bool = False


async def raw_publish_async(url: str, settings: JournalSettings, count: int) -> float:
    nc = await nats.connect(url)
    await nc.jetstream().add_stream(required_config(settings))
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    data = wire.encode(envelope(1))
    start = time.perf_counter()
    for _ in range(count):
        await js.publish_async(settings.subject, data)
    await js.publish_async_completed()
    elapsed = time.perf_counter() - start
    await nc.close()
    return count / elapsed


async def ours(url: str, settings: JournalSettings, count: int) -> float:
    nc = await connect(url)
    await ensure_stream(nc, settings)
    journal = await CommandJournal.open(nc, settings, epoch=1, after=Position())
    commands = [envelope(seq) for seq in range(1, count + 1)]
    start = time.perf_counter()
    future = None
    for command in commands:
        future = await journal.append(command)
    assert future is not None
    await future
    elapsed = time.perf_counter() - start
    await journal.aclose()
    await nc.close()
    return count / elapsed


async def run(bench: JournalBench) -> dict[str, Any]:
    variants: list[Variant] = []
    ratios: dict[str, tuple[float, float | None]] = {}
    for durability, count in (("acked", bench.count), ("fsync", bench.fsync_count)):
        raw = Variant(f"raw_{durability}", f"(a) raw publish_async, window {WINDOW} [{durability}]")
        mine = Variant(f"jetstandby_{durability}", f"(b) jetstandby journal [{durability}]")
        async with embedded_server(sync_always=durability == "fsync") as server:
            for i in range(bench.runs):
                raw.rates.append(
                    await raw_publish_async(server.url, JournalSettings(journal=f"raw{i}"), count)
                )
                mine.rates.append(
                    await ours(server.url, JournalSettings(journal=f"ours{i}"), count)
                )
        variants += [raw, mine]
        target = TARGET_VS_RAW if durability == "acked" else None
        ratios[f"ratio_vs_raw_{durability}"] = (ratio(mine.median, raw.median), target)
    ratios["ratio_vs_raw"] = (ratios["ratio_vs_raw_acked"][0], None)
    acked = next(v for v in variants if v.key == "jetstandby_acked").median
    fsync = next(v for v in variants if v.key == "jetstandby_fsync").median
    return report(
        f"journal: {bench.count:,} commands (fsync: {bench.fsync_count:,}), median of {bench.runs}",
        variants,
        ratios,
        {
            "count": bench.count,
            "fsync_count": bench.fsync_count,
            "window": WINDOW,
            "fsync_cost_x": ratio(acked, fsync),
        },
        as_json=bench.as_json,
    )
