"""Memory: a standby's RSS while it replays a long journal from command 1.

The journal is written first: an epoch marker fenced on the empty stream, as a primary
writes it, then the commands (the bounded order-book mix of :mod:`e2e_load`, each with a
request id so the exactly-once record fills too) as raw publishes, see
:func:`write_journal`. Then a
standby process replays all of it; its engine notes its own RSS every ``RSS_EVERY`` commands
and the bench samples the RSS from outside every ``SAMPLE_EVERY`` seconds as well.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Final

from jetstandby.config import JournalSettings
from jetstandby.journal.stream import close_quietly, connect, ensure_stream
from jetstandby_bench.e2e_engine import rss_bytes
from jetstandby_bench.e2e_load import bounded_orders
from jetstandby_bench.e2e_procs import read_rows, start_node, stop_node
from jetstandby_bench.prewrite import publish_commands, write_marker

JOURNAL: Final = "e2e_memory"
RSS_EVERY: Final = 50_000
SAMPLE_EVERY: Final = 0.5
MB: Final = 1024 * 1024


async def write_journal(url: str, count: int, seed: int = 11) -> float:
    """Write an epoch marker and ``count`` commands; returns commands per second.

    See :mod:`jetstandby_bench.prewrite`: the marker fenced as a primary writes it, the
    commands published raw, each with a request id so the exactly-once record fills too.
    """
    settings = JournalSettings(journal=JOURNAL)
    nc = await connect(url, name="jetstandby-bench-writer")
    try:
        await ensure_stream(nc, settings)
        await write_marker(nc, settings)
        return await publish_commands(nc, settings, bounded_orders(seed, count), first_seq=2)
    finally:
        await close_quietly(nc)


async def measure(
    workdir: Path, url: str, token: str, count: int, timeout: float
) -> dict[str, Any]:
    """Replay ``count`` commands (already written) into a fresh standby; its RSS over time."""
    rss_log = workdir / "memory.rss"
    node = await start_node(
        workdir,
        "mem",
        url,
        token=token,
        journal=JOURNAL,
        role="standby",
        replicas=1,
        env={
            "JSB_E2E_RSS_LOG": str(rss_log),
            "JSB_E2E_RSS_EVERY": str(RSS_EVERY),
            "JSB_E2E_EXPECT": str(count),
        },
    )
    outside: list[tuple[float, float]] = []
    start = time.monotonic()
    try:
        while not rss_log.exists():
            if node.proc.returncode is not None:
                raise RuntimeError(f"the memory standby exited ({node.proc.returncode})")
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"the standby did not replay {count:,} commands in {timeout}s")
            outside.append((round(time.monotonic() - start, 2), rss_bytes(node.proc.pid) / MB))
            await asyncio.sleep(SAMPLE_EVERY)
        elapsed = time.monotonic() - start
    finally:
        await stop_node(node)
    inside = read_rows(rss_log, 3)  # applies, time_ns, rss bytes
    return summarize(inside, outside, count, elapsed)


def summarize(
    inside: Any, outside: list[tuple[float, float]], count: int, elapsed: float
) -> dict[str, Any]:
    early = count // 5  # 1M of the default 5M

    def rss_at(applied: int) -> float:
        at = inside[inside[:, 0] >= applied]
        return round(float(at[0, 2]) / MB, 1) if len(at) else 0.0

    rss_early, rss_end = rss_at(early), rss_at(count)
    return {
        "count": count,
        "early_count": early,
        "rss_mb_start": round(float(inside[0, 2]) / MB, 1) if len(inside) else 0.0,
        "rss_mb_early": rss_early,
        "rss_mb_end": rss_end,
        "rss_mb_peak": round(max((mb for _, mb in outside), default=0.0), 1),
        "rss_growth": round(rss_end / rss_early - 1, 4) if rss_early else None,
        "replay_per_s": round(count / elapsed) if elapsed else 0,
        "series": [[int(a), round(float(r) / MB, 1)] for a, _, r in inside.tolist()],
        "outside_series": [[t, round(mb, 1)] for t, mb in outside],
    }
