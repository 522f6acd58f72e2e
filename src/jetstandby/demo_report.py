"""The demo's report directory: ``summary.json`` and ``chart.png`` (throughput and standby
lag over time, with the kill and the promotion marked)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def write_report(
    base: Path,
    summary: dict[str, Any],
    timeline: list[dict[str, Any]],
    events: list[tuple[float, str]],
) -> Path:
    directory = base / time.strftime("demo-%Y%m%d-%H%M%S")
    directory.mkdir(parents=True, exist_ok=True)
    document = {"summary": summary, "events": events, "timeline": timeline}
    (directory / "summary.json").write_text(json.dumps(document, indent=2, default=str))
    _chart(directory / "chart.png", timeline, events)
    return directory


def _chart(path: Path, timeline: list[dict[str, Any]], events: list[tuple[float, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [row["t"] for row in timeline]
    delay = [row.get("apply_delay_ms") for row in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    top.plot(t, [row.get("rate", 0) for row in timeline], color="tab:blue")
    top.set_ylabel("acknowledged / s")
    # No standby left after the promotion (with one standby): a gap, not a zero.
    bottom.plot(t, [float("nan") if d is None else d for d in delay], color="tab:orange")
    bottom.set_ylabel("standby apply delay (ms)")
    bottom.set_xlabel("seconds")
    styles = ["--", ":", "-."]
    for (when, text), style in zip(events, styles * len(events), strict=False):
        label = text.split(":")[0]
        top.axvline(
            when, color="tab:red", linestyle=style, linewidth=1, label=f"{when:.2f}s {label}"
        )
        bottom.axvline(when, color="tab:red", linestyle=style, linewidth=1)
    if events:
        top.legend(loc="lower right", fontsize=8)
    fig.suptitle("jetstandby demo: throughput and standby lag through a failover")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
