"""``jetstandby bench replay``: how fast a standby follows the journal.

Variants, measured on the same stream, interleaved run by run:

- ``raw``: nats-py's ordered consumer with a no-op callback, the fastest path nats-py
  offers (but unsafe: it can drop messages silently, nats-io/nats.go#2107);
- ``jetstandby``: our replay loop with a no-op handler (envelope decode, contiguity check,
  progress and lag tracking included);
- ``seed_ack_sync``: the seed's shape: an explicit-ack consumer whose loop applies each
  message and awaits the server's acknowledgement of its ack before the next (nats-py
  ``ack_sync``), so one round trip per command;
- ``seed_ack``: the same, but ``await msg.ack()`` only publishes the ack (no round trip).
  Reported for completeness.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from jetstandby import (
    CommandJournal,
    JetStreamFeed,
    JournalSettings,
    Position,
    ReplayProgress,
    connect,
    ensure_stream,
    promote_channel,
    run_replay_loop,
    wire,
)
from jetstandby_bench.common import Variant, embedded_server, envelope, ratio, report

TARGET_VS_RAW = 0.9
TARGET_VS_SEED = 3.0


@dataclass(frozen=True)
class ReplayBench:
    count: int = 200_000
    seed_count: int = 20_000
    runs: int = 3
    as_json: bool = False


async def build_stream(url: str, settings: JournalSettings, count: int) -> None:
    nc = await connect(url)
    await ensure_stream(nc, settings)
    journal = await CommandJournal.open(nc, settings, epoch=1, after=Position())
    future = None
    for seq in range(1, count + 1):
        future = await journal.append(envelope(seq))
    assert future is not None
    await future
    await journal.aclose()
    await nc.close()


async def raw_ordered(url: str, settings: JournalSettings, count: int) -> float:
    nc = await nats.connect(url)
    done = asyncio.Event()
    seen = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    start = time.perf_counter()
    sub = await nc.jetstream().subscribe(settings.subject, ordered_consumer=True, cb=on_msg)
    await done.wait()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    await nc.close()
    return count / elapsed


class _NoOp:
    def __init__(self, count: int) -> None:
        self.count = count
        self.done = asyncio.Event()

    def handle_command(self, command: wire.Envelope) -> None:
        if command.seq == self.count:
            self.done.set()


async def ours(url: str, settings: JournalSettings, count: int) -> float:
    nc = await connect(url)
    feed = JetStreamFeed(nc, settings)
    handler = _NoOp(count)
    sender, signal = promote_channel()
    start = time.perf_counter()
    task = asyncio.create_task(run_replay_loop(feed, handler, ReplayProgress(), signal))
    await handler.done.wait()
    elapsed = time.perf_counter() - start
    sender.promote()
    await task
    await nc.close()
    return count / elapsed


async def seed_style(url: str, settings: JournalSettings, count: int, *, sync: bool) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    handler = _NoOp(count)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        max_ack_pending=1000,
    )

    async def on_msg(msg: Msg) -> None:
        handler.handle_command(wire.decode(msg.data))
        if sync:
            await msg.ack_sync()
        else:
            await msg.ack()

    start = time.perf_counter()
    sub = await js.subscribe(settings.subject, cb=on_msg, manual_ack=True, config=config)
    await handler.done.wait()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    await nc.close()
    return count / elapsed


async def run(bench: ReplayBench) -> dict[str, Any]:
    settings = JournalSettings(journal="bench_replay")
    raw = Variant("raw", "(a) raw nats-py ordered consumer, no-op callback")
    ours_v = Variant("jetstandby", "(b) jetstandby replay loop, no-op handler")
    seed = Variant("seed_ack_sync", f"(c) seed-style, ack_sync per message [{bench.seed_count:,}]")
    seed_pub = Variant("seed_ack", "(c') seed-style, ack publish per message")
    async with embedded_server() as server:
        await build_stream(server.url, settings, bench.count)
        for _ in range(bench.runs):
            raw.rates.append(await raw_ordered(server.url, settings, bench.count))
            ours_v.rates.append(await ours(server.url, settings, bench.count))
            seed.rates.append(await seed_style(server.url, settings, bench.seed_count, sync=True))
            seed_pub.rates.append(await seed_style(server.url, settings, bench.count, sync=False))
    return report(
        f"replay: {bench.count:,} commands of {len(wire.encode(envelope(1)))} bytes, "
        f"median of {bench.runs}",
        [raw, ours_v, seed, seed_pub],
        {
            "ratio_vs_raw": (ratio(ours_v.median, raw.median), TARGET_VS_RAW),
            "ratio_vs_seed_style": (ratio(ours_v.median, seed.median), TARGET_VS_SEED),
            "ratio_vs_seed_ack_publish": (ratio(ours_v.median, seed_pub.median), None),
        },
        {"count": bench.count, "seed_count": bench.seed_count, "payload_bytes": 100},
        as_json=bench.as_json,
    )
