"""What every benchmark shares: an embedded server, a command stream, medians and a table."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jetstandby import wire
from jetstandby.server import NatsServer

PAYLOAD_BYTES = 100


@dataclass
class Variant:
    """One thing measured, ``runs`` times: rates in commands per second."""

    key: str
    label: str
    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


def envelope(seq: int, epoch: int = 1) -> wire.Envelope:
    return wire.Envelope(1, seq, epoch, time.time_ns(), "Bench", 1, b"p" * PAYLOAD_BYTES)


@asynccontextmanager
async def embedded_server(*, sync_always: bool = False) -> AsyncIterator[NatsServer]:
    server = NatsServer(sync_always=sync_always)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def machine() -> dict[str, Any]:
    import os
    import platform

    return {"cores": os.cpu_count(), "python": platform.python_version()}


def report(
    title: str,
    variants: list[Variant],
    ratios: dict[str, tuple[float, float | None]],
    extra: dict[str, Any],
    *,
    as_json: bool,
) -> dict[str, Any]:
    """Print a table (or one JSON object) and return the JSON-able result.

    ``ratios`` maps a key to ``(value, target)``; a target of ``None`` is reported only.
    """
    result: dict[str, Any] = {
        **extra,
        "machine": machine(),
        "runs": {v.key: [round(r) for r in v.rates] for v in variants},
        "median_per_s": {v.key: round(v.median) for v in variants},
    }
    for key, (value, target) in ratios.items():
        result[key] = value
        if target is not None:
            result.setdefault("targets", {})[key] = {"target": target, "met": value >= target}
    if as_json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return result
    console = Console()
    table = Table(title=title)
    table.add_column("variant")
    table.add_column("median cmds/s", justify="right")
    table.add_column("runs", justify="right")
    for v in variants:
        rates = ", ".join(f"{r:,.0f}" for r in v.rates)
        table.add_row(escape(v.label), f"{v.median:,.0f}", rates)
    console.print(table)
    for key, (value, target) in ratios.items():
        verdict = (
            ""
            if target is None
            else f" (target ≥ {target:.1f}: {'met' if value >= target else 'NOT met'})"
        )
        console.print(f"{key} = {value:.2f}{verdict}")
    for key, value in extra.items():
        console.print(f"[dim]{key}: {value}[/dim]")
    return result
