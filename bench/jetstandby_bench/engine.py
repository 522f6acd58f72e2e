"""``jetstandby bench engine``: how fast the order book engine applies commands.

Apply only: the commands come from :func:`jetstandby.engines.orderbook.generate` (about 60%
places, 30% cancels, 10% replaces over four instruments) and are built into ``Command``
structs before the clock starts; each run times ``apply`` over all of them on a fresh engine.
No journal, no network. Every run must end in the same state (the digest is checked).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Final

from jetstandby.engine import Command
from jetstandby.engines.orderbook import OrderBookEngine, generate
from jetstandby_bench.common import Variant, report

TARGET_COMMANDS_PER_S: Final = 100_000
SEED: Final = 1
INSTRUMENTS: Final = 4


@dataclass(frozen=True)
class EngineBench:
    count: int = 200_000
    runs: int = 3
    as_json: bool = False


def build_commands(count: int) -> list[Command]:
    return [
        Command(seq, 1_000 * seq, command_type, version, payload)
        for seq, (command_type, version, payload) in enumerate(
            generate(SEED, count, INSTRUMENTS), start=1
        )
    ]


def timed_apply(commands: list[Command]) -> tuple[float, OrderBookEngine]:
    """Commands per second applying ``commands`` to a fresh engine, and that engine."""
    engine = OrderBookEngine()
    apply = engine.apply
    gc.collect()
    start = time.perf_counter()
    for command in commands:
        apply(command)
    elapsed = time.perf_counter() - start
    return len(commands) / elapsed, engine


async def run(bench: EngineBench) -> dict[str, Any]:
    commands = build_commands(bench.count)
    variant = Variant("orderbook", "order book apply (60% place, 30% cancel, 10% replace)")
    digests = set()
    open_orders = 0
    for _ in range(bench.runs):
        rate, engine = timed_apply(commands)
        variant.rates.append(rate)
        digests.add(engine.digest().hex())
        open_orders = engine.open_order_count()
    if len(digests) != 1:
        raise AssertionError(f"runs ended in different states: {sorted(digests)}")
    return report(
        f"engine: order book, {bench.count:,} commands apply-only, median of {bench.runs}",
        [variant],
        {"target_100k": (round(variant.median / TARGET_COMMANDS_PER_S, 3), 1.0)},
        {
            "commands_per_s": round(variant.median),
            "count": bench.count,
            "seed": SEED,
            "instruments": INSTRUMENTS,
            "open_orders_at_end": open_orders,
            "digest": digests.pop()[:16],
        },
        as_json=bench.as_json,
    )
