"""What ``jetstandby bench e2e`` prints (tables, or one JSON object) and draws (a PNG)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_err = Console(stderr=True)
_out = Console(width=None if sys.stdout.isatty() else 150)


def say(message: str) -> None:
    _out.print(f"[dim]{message}[/dim]")


def say_stderr(message: str) -> None:
    _err.print(f"[dim]{message}[/dim]")


def show(full: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        json.dump(full, sys.stdout)
        sys.stdout.write("\n")
        return
    tables = (throughput_table, load_table, nodes_table, failover_table)
    for table in (make(full) for make in tables):
        if table is not None:
            _out.print(table)
    if "memory" in full:
        _out.print(memory_table(full["memory"]))
    for key in ("single", "cluster"):
        if key in full:
            _out.print(f"{key}: CPU at the maximum (cores): {full[key]['cpu_cores']}")
            _out.print(f"{key}: CPU µs per acknowledged command: {full[key]['cpu_us_per_ack']}")
    if "profile" in full:
        _out.print(profile_table(full["profile"]))
    if "bottleneck" in full:
        _out.print(f"[bold]bottleneck:[/bold] {full['bottleneck']}")
    if "lag_cause" in full:
        _out.print(f"[bold]standby lag:[/bold] {full['lag_cause']}")
    for key, t in full["targets"].items():
        verdict = "met" if t["met"] else "[bold red]NOT met[/bold red]"
        _out.print(f"target {key} {t['op']} {t['target']}: {t['value']} ({verdict})")
    _out.print(
        "[dim]latency: from when a command was due to its client's receipt of the "
        "acknowledgement; lag: from that receipt to the standby's apply of the same seq "
        "(negative values, an apply before the client read its ack, count as 0 in p50/p99; "
        "their share is lag<0); stamp→apply: from the primary's stamp (before it applied and "
        "journaled the command) to the standby's apply[/dim]"
    )
    if "report" in full:
        _out.print(f"chart and summary: {full['report']}")


def throughput_table(full: dict[str, Any]) -> Table:
    table = Table(title="acknowledged throughput (closed loop) vs the engine in process")
    for column in ("variant", "cmds/s", "vs in-process", "latency p50/p99 ms"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    base = full["baseline_throughput"]
    table.add_row("order book in process, no replication", f"{base:,.0f}", "1", "")
    for key, label in (("single", "primary + standby, 1 server"), ("cluster", "same, R3 cluster")):
        if key in full:
            p = full[key]
            lat = "/".join(f"{v:.1f}" for v in p["latency_ms_p50_p99"])
            table.add_row(
                label, f"{p['max_throughput']:,.0f}", f"{p['max_throughput'] / base:.3f}", lat
            )
    return table


def load_table(full: dict[str, Any]) -> Table:
    table = Table(title="latency and standby lag under open-loop load (ms)")
    for column in (
        "setup", "load", "offered/s", "acked/s", "latency p50", "p99", "p99.9",
        "lag p50", "p99", "p99.9", "max", "lag<0", "stamp→apply p99",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "setup" else "right")
    for key in ("single", "cluster"):
        for level in full.get(key, {}).get("levels", []):
            lat, lag = level["latency_ms"], level["lag_ms"]
            table.add_row(
                key, f"{level['load']:.0%}", f"{level['offered_per_s']:,.0f}",
                f"{level['achieved_per_s']:,.0f}", f"{lat['p50']:.2f}", f"{lat['p99']:.2f}",
                f"{lat['p99.9']:.2f}", f"{lag['p50']:.2f}", f"{lag['p99']:.2f}",
                f"{lag['p99.9']:.2f}", f"{lag['max']:.2f}", f"{level['lag_negative_share']:.0%}",
                f"{level['stamp_to_apply_ms']['p99']:.2f}",
            )  # fmt: skip
    return table


def nodes_table(full: dict[str, Any]) -> Table:
    """Per load level: the cores each node used, the milliseconds per second it was ready to
    run but waited for a core, and its garbage collections (count, full ones, longest)."""
    table = Table(title="the nodes at each load: CPU, waiting for a core, garbage collections")
    for column in (
        "setup", "load", "standby cores", "waited ms/s", "GC n / full / max ms",
        "primary cores", "waited ms/s", "GC n / full / max ms",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "setup" else "right")
    for key in ("single", "cluster"):
        for level in full.get(key, {}).get("levels", []):
            cells = [key, f"{level['load']:.0%}"]
            for role in ("standby", "primary"):
                gc = level["gc"][role]
                cells += [
                    f"{level['cpu_cores'][role]:.2f}",
                    f"{level['run_queue_wait_ms_per_s'][role]:.0f}",
                    f"{gc['count']} / {gc['full']} / {gc['max_ms']:.1f}",
                ]
            table.add_row(*cells)
    return table


def failover_table(full: dict[str, Any]) -> Table | None:
    if "failover" not in full:
        return None
    fo = full["failover"]
    table = Table(
        title="failover: SIGKILL of the primary to the first acknowledgement "
        f"({fo['count']} rounds, ms)"
    )
    for column in ("part", "p50", "p99"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for key, label in (
        ("detection_ms", "detection/operator (the bench promotes at once)"),
        ("promote_ms", "promote (node: request to serving)"),
        ("first_ack_ms", "first acknowledgement after promote"),
        ("total_ms", "total"),
    ):
        table.add_row(label, f"{fo[key]['p50']:.1f}", f"{fo[key]['p99']:.1f}")
    return table


def memory_table(memory: dict[str, Any]) -> Table:
    table = Table(title=f"standby RSS replaying {memory['count']:,} commands (MB)")
    for column in (
        "at start",
        f"at {memory['early_count']:,}",
        f"at {memory['count']:,}",
        "peak",
        "growth",
        "replay/s",
    ):
        table.add_column(column, justify="right")
    growth = memory["rss_growth"]
    table.add_row(
        f"{memory['rss_mb_start']:.1f}", f"{memory['rss_mb_early']:.1f}",
        f"{memory['rss_mb_end']:.1f}", f"{memory['rss_mb_peak']:.1f}",
        "-" if growth is None else f"{growth:+.1%}",
        f"{memory['replay_per_s']:,}",
    )  # fmt: skip
    return table


def profile_table(profile: dict[str, Any]) -> Table:
    table = Table(
        title=f"primary under cProfile ({profile['throughput_under_profiler']:,.0f}/s): own time"
    )
    for column in ("function", "calls", "own s", "share", "cumulative s"):
        table.add_column(column, justify="left" if column == "function" else "right")
    for row in profile["top_own"]:
        table.add_row(row["function"], f"{row['calls']:,}", f"{row['own_s']:.2f}",
                      f"{row['own_share']:.0%}", f"{row['cum_s']:.2f}")  # fmt: skip
    return table


def write_chart(report_dir: Path, full: dict[str, Any]) -> Path:
    """``report_dir/e2e-<time>/chart.png`` and ``summary.json``; returns the directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = report_dir / time.strftime("e2e-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(full, indent=1))
    fig, (lat_ax, lag_ax, mem_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    for key, style in (("single", "-"), ("cluster", "--")):
        levels = full.get(key, {}).get("levels", [])
        if not levels:
            continue
        x = [level["load"] * 100 for level in levels]
        for q, marker, color in (("p50", "o", "C0"), ("p99", "s", "C1"), ("p99.9", "^", "C2")):
            y = [lv["latency_ms"][q] for lv in levels]
            lat_ax.plot(x, y, style, marker=marker, color=color, label=f"{key} {q}")
        for q, marker, color in (
            ("p50", "o", "C0"), ("p99", "s", "C1"), ("p99.9", "^", "C2"), ("max", "v", "C4"),
        ):  # fmt: skip
            y = [lv["lag_ms"][q] for lv in levels]
            lag_ax.plot(x, y, style, marker=marker, color=color, label=f"{key} {q}")
        stamp = [lv["stamp_to_apply_ms"]["p99"] for lv in levels]
        lag_ax.plot(x, stamp, style, marker="x", color="C3", label=f"{key} stamp→apply p99")
    lat_ax.set(
        title="submit → acknowledgement latency",
        xlabel="offered load (% of max)",
        ylabel="ms",
        yscale="log",
    )
    lag_ax.set(
        title="standby lag (client's ack → standby apply)",
        xlabel="offered load (% of max)",
        ylabel="ms (symlog; 0 = applied before the ack arrived)",
    )
    lag_ax.set_yscale("symlog", linthresh=0.1)
    lag_ax.axhline(10, color="grey", linewidth=0.8, linestyle=":")
    for ax in (lat_ax, lag_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    memory = full.get("memory")
    if memory:
        series = memory["series"]
        mem_ax.plot([a / 1e6 for a, _ in series], [mb for _, mb in series], marker=".")
        mem_ax.set_ylim(bottom=0)
    else:
        mem_ax.text(0.5, 0.5, "memory phase skipped", ha="center", transform=mem_ax.transAxes)
    mem_ax.set(
        title="standby RSS while replaying", xlabel="commands applied (millions)", ylabel="MB"
    )
    mem_ax.grid(alpha=0.3)
    where = full["machine"]
    fig.suptitle(f"jetstandby bench e2e: {where['cores']} cores, Python {where['python']}")
    fig.tight_layout()
    fig.savefig(out / "chart.png", dpi=110)
    plt.close(fig)
    return out
