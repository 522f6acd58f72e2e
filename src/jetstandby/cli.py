"""The ``jetstandby`` command line. The only module that configures logging or exit codes.

Exit codes: 0 success; 1 a check or target failed; 2 bad usage or configuration;
3 a required service (NATS) was unreachable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.logging import RichHandler

from jetstandby import __version__
from jetstandby.errors import ConfigError, JetstandbyError, JournalUnavailable, ServerError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_FENCED: Final = 4
EXIT_INTERRUPTED: Final = 130


class ExitStatus(Exception):
    """A command's outcome as an exit code, with the message already printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _number(
    flag: str, convert: Callable[[str], float], noun: str, rule: str, ok: Callable[[float], bool]
) -> Any:
    """An argparse type: ``convert`` the text (else "not ``noun``"), then check it is ``ok``
    (else ``rule``); both errors name ``flag``."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: {text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{flag}: {rule}, got {text!r}")
        return value

    return parse


def _positive_float(flag: str) -> Any:
    return _number(flag, float, "a number", "must be >= 0", lambda v: v >= 0)  # NaN fails too


def _nice(flag: str) -> Any:
    return _number(flag, int, "an integer", "a nice value is -20 to 19", lambda v: -20 <= v <= 19)


def _count(flag: str) -> Any:
    return _number(flag, _integer, "an integer", "must be >= 1", lambda v: v >= 1)


def _integer(text: str) -> int:
    return int(text.replace("_", ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetstandby",
        description="Hot-standby replication for deterministic engines over NATS JetStream.",
    )
    parser.add_argument("--version", action="version", version=f"jetstandby {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="a matching engine fails over under load without losing an order",
        description="Starts nats-server, a primary and standbys as processes, drives order-book "
        "commands, kills the primary with SIGKILL midway, promotes a standby, then verifies "
        "every acknowledged command and the state digest.",
    )
    demo.add_argument("--duration", type=_positive_float("--duration"), default=20.0)
    demo.add_argument(
        "--rate", type=_positive_float("--rate"), default=1000.0, help="commands/s; 0 = max"
    )
    demo.add_argument("--standbys", type=_count("--standbys"), default=1)
    demo.add_argument("--cluster", type=int, choices=[1, 3], default=1, help="3: an R3 cluster")
    demo.add_argument("--engine", default="orderbook", help="orderbook or kv")
    demo.add_argument("--report-dir", default="reports", help="where summary.json and chart.png go")
    demo.add_argument("--no-report", action="store_true")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    bench = commands.add_parser("bench", help="benchmarks against same-run baselines")
    which = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    replay = which.add_parser("replay", help="standby replay vs raw nats-py and the seed's style")
    replay.add_argument("--count", type=_count("--count"), default=200_000)
    replay.add_argument("--seed-count", type=_count("--seed-count"), default=20_000)
    replay.add_argument("--runs", type=_count("--runs"), default=3)
    replay.add_argument("--json", action="store_true")
    journal = which.add_parser("journal", help="fenced journal appends vs raw publish_async")
    journal.add_argument("--count", type=_count("--count"), default=200_000)
    journal.add_argument("--fsync-count", type=_count("--fsync-count"), default=20_000)
    journal.add_argument("--runs", type=_count("--runs"), default=3)
    journal.add_argument("--json", action="store_true")

    _add_node_commands(commands)

    engine = which.add_parser("engine", help="order-book apply-only throughput, realistic mix")
    engine.add_argument("--count", type=_count("--count"), default=200_000)
    engine.add_argument("--runs", type=_count("--runs"), default=3)
    engine.add_argument("--json", action="store_true")
    _add_e2e_bench(which)
    _add_lag_bench(which)
    _add_faults_bench(which)
    boot = which.add_parser(
        "bootstrap", help="a new standby caught up by full replay vs by snapshot plus tail"
    )
    boot.add_argument("--count", type=_count("--count"), default=1_000_000)
    boot.add_argument("--tail", type=_count("--tail"), default=10_000, help="after the snapshot")
    boot.add_argument("--runs", type=_count("--runs"), default=1, help="each writes a journal")
    boot.add_argument("--json", action="store_true")

    server = commands.add_parser("server", help="run an embedded nats-server in the foreground")
    server.add_argument("--port", type=int, default=None)
    server.add_argument("--store", default=None, help="store directory (default: a temporary one)")
    server.add_argument(
        "--durability",
        choices=["acked", "fsync"],
        default="acked",
        help="fsync: the server acknowledges only after fsync (sync_interval: always)",
    )
    return parser


def _add_faults_bench(which: Any) -> None:
    faults = which.add_parser(
        "faults",
        help="fault-injection scenarios: nothing lost, duplicated or split-brained",
        description="Runs the fault scenarios (the slow tests' code) and prints, per scenario: "
        "cycles, operations acknowledged, lost/duplicated/unexpected, failover p50/p99.",
    )
    faults.add_argument("--cycles", type=_count("--cycles"), default=None, help="per scenario")
    faults.add_argument("--only", nargs="+", default=[], metavar="NAME", help="these scenarios")
    faults.add_argument("--keep", action="store_true", help="keep histories and node logs")
    faults.add_argument("--json", action="store_true")


def _add_lag_bench(which: Any) -> None:
    lag = which.add_parser(
        "lag",
        help="the standby's lag at one fixed rate, over several fresh runs: each and the median",
    )
    seconds = _positive_float
    lag.add_argument("--rate", type=seconds("--rate"), default=3050.0, help="commands/s")
    lag.add_argument("--duration", type=seconds("--duration"), default=30.0, help="per run")
    lag.add_argument("--runs", type=_count("--runs"), default=5)
    lag.add_argument("--warmup-rate", type=seconds("--warmup-rate"), default=4000.0)
    lag.add_argument("--warmup", type=seconds("--warmup"), default=15.0)
    lag.add_argument("--client-procs", type=_count("--client-procs"), default=2)
    lag.add_argument("--connections", type=_count("--connections"), default=4, help="per proc")
    lag.add_argument(
        "--standby-nice",
        type=_nice("--standby-nice"),
        default=0,
        help="the standby's scheduling priority (-20 to 19; below 0 needs root): as if it had "
        "a core of its own",
    )
    lag.add_argument(
        "--check-exactly-once",
        action="store_true",
        help="after each run, count request ids journaled twice (admission control's check)",
    )
    lag.add_argument("--json", action="store_true")


def _add_e2e_bench(which: Any) -> None:
    e2e = which.add_parser(
        "e2e",
        help="end to end: throughput, lag, failover, memory, cluster (processes, real server)",
    )
    seconds = _positive_float
    e2e.add_argument("--duration", type=seconds("--duration"), default=10.0, help="max-rate run")
    e2e.add_argument("--warmup", type=seconds("--warmup"), default=2.0)
    e2e.add_argument("--lag-duration", type=seconds("--lag-duration"), default=30.0)
    e2e.add_argument("--client-procs", type=_count("--client-procs"), default=2)
    e2e.add_argument("--concurrency", type=_count("--concurrency"), default=64, help="per proc")
    e2e.add_argument("--connections", type=_count("--connections"), default=4, help="per proc")
    e2e.add_argument("--failovers", type=_count("--failovers"), default=10)
    e2e.add_argument("--failover-rate", type=seconds("--failover-rate"), default=500.0)
    e2e.add_argument("--memory-count", type=_count("--memory-count"), default=5_000_000)
    e2e.add_argument("--baseline-count", type=_count("--baseline-count"), default=200_000)
    e2e.add_argument("--runs", type=_count("--runs"), default=3, help="baseline runs")
    e2e.add_argument("--profile-duration", type=seconds("--profile-duration"), default=5.0)
    for phase in ("cluster", "memory", "failover", "profile"):
        e2e.add_argument(f"--skip-{phase}", action="store_true")
    e2e.add_argument("--report-dir", default="reports", help="where chart.png and summary.json go")
    e2e.add_argument("--no-report", action="store_true")
    e2e.add_argument("--json", action="store_true")


def _add_node_commands(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run one node (standby, or primary) with its admin API",
        description="Settings come from flags, then JETSTANDBY_* variables, then --config.",
    )
    run.add_argument("--role", choices=["primary", "standby"], default=None)
    run.add_argument("--engine", default=None, metavar="NAME|module:Class", help="default: kv")
    run.add_argument("--nats", default=None, metavar="URL", help="default: an embedded server")
    run.add_argument("--admin", default=None, metavar="HOST:PORT", help="default 127.0.0.1:7070")
    run.add_argument("--config", default=None, metavar="FILE", help="a TOML file")
    run.add_argument("--node-id", default=None, help="unique per node; default: random")
    run.add_argument("--journal", default=None)
    run.add_argument("--token-file", default=None, help="bearer token for the admin API")
    run.add_argument("--max-promote-lag", type=_count("--max-promote-lag"), default=None)
    run.add_argument(
        "--stay-up", action="store_true", default=None, help="keep running after being fenced"
    )
    run.add_argument(
        "--durability",
        choices=["acked", "fsync"],
        default=None,
        help="the embedded server's: fsync acknowledges only after fsync (sync_interval: always)",
    )

    status = commands.add_parser("status", help="a node's status (live with --watch)")
    status.add_argument("--admin", default="http://127.0.0.1:7070", metavar="URL")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--json", action="store_true")

    promote = commands.add_parser("promote", help="promote a standby through its admin API")
    promote.add_argument("--admin", default="http://127.0.0.1:7070", metavar="URL")
    promote.add_argument("--force", action="store_true", help="promote despite lag")
    promote.add_argument("--reason", default=None, help="required with --force; logged")
    promote.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True)
    promote.add_argument("--timeout", type=_positive_float("--timeout"), default=10.0)
    promote.add_argument("--token-file", default=None, help="default: $JETSTANDBY_TOKEN")

    skip = commands.add_parser(
        "skip", help="let a halted standby pass over the one message it halted at (logged)"
    )
    skip.add_argument("--admin", default="http://127.0.0.1:7070", metavar="URL")
    skip.add_argument("--stream-seq", type=_count("--stream-seq"), required=True)
    skip.add_argument("--reason", required=True, help="why; logged and kept in status")
    skip.add_argument("--token-file", default=None, help="default: $JETSTANDBY_TOKEN")

    _add_snapshot_commands(commands)

    submit = commands.add_parser("submit", help="send one command to the primary")
    submit.add_argument("command_type", metavar="TYPE")
    submit.add_argument("payload", metavar="JSON", help="a JSON object, sent as msgpack")
    submit.add_argument("--version", dest="command_version", type=int, default=1)
    submit.add_argument("--nats", default="nats://127.0.0.1:4222", metavar="URL")
    submit.add_argument("--journal", default="default")
    submit.add_argument("--request-id", default=None)
    submit.add_argument("--deadline", type=_positive_float("--deadline"), default=10.0)


def _add_snapshot_commands(commands: Any) -> None:
    snapshot = commands.add_parser("snapshot", help="take, list or verify engine snapshots")
    which = snapshot.add_subparsers(dest="snapshot", required=True, metavar="ACTION")
    take = which.add_parser("take", help="ask a standby (admin API) to snapshot its state now")
    take.add_argument("--admin", default="http://127.0.0.1:7070", metavar="URL")
    take.add_argument("--reason", default=None, help="logged by the node")
    take.add_argument("--token-file", default=None, help="default: $JETSTANDBY_TOKEN")
    for name, text in (
        ("list", "the snapshots in a journal's bucket, newest first"),
        ("verify", "check each snapshot as a bootstrapping node would (exit 1: none usable)"),
    ):
        sub = which.add_parser(name, help=text)
        sub.add_argument("--nats", default="nats://127.0.0.1:4222", metavar="URL")
        sub.add_argument("--journal", default="default")
        sub.add_argument("--json", action="store_true")
        if name == "verify":
            sub.add_argument("--engine", required=True, metavar="NAME|module:Class")
            sub.add_argument("--name", default=None, help="only this snapshot")


def _configure_logging(console: Console, verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


async def _demo(args: argparse.Namespace, console: Console) -> int:
    from jetstandby.demo import DemoSettings, run_demo

    settings = DemoSettings(
        duration=args.duration,
        rate=args.rate,
        standbys=args.standbys,
        cluster=args.cluster,
        engine=args.engine,
        report_dir=None if args.no_report else Path(args.report_dir),
    )
    main_task = asyncio.current_task()
    assert main_task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # clean up every process we started
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        summary = await run_demo(settings, console)
    except asyncio.CancelledError:
        print("jetstandby: demo interrupted; every process it started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(summary))
    else:
        from rich.table import Table

        table = Table(title="verified")
        table.add_column("check")
        table.add_column("result", justify="right")
        for key, value in summary.items():
            table.add_row(key, str(value))
        console.print(table)
    return EXIT_OK if summary["ok"] else EXIT_FAILED


async def _bench(args: argparse.Namespace, console: Console) -> int:
    result: dict[str, Any]
    if args.bench == "replay":
        from jetstandby_bench.replay import ReplayBench
        from jetstandby_bench.replay import run as run_replay

        result = await run_replay(
            ReplayBench(args.count, args.seed_count, args.runs, as_json=args.json)
        )
    elif args.bench == "engine":
        from jetstandby_bench.engine import EngineBench
        from jetstandby_bench.engine import run as run_engine

        result = await run_engine(EngineBench(args.count, args.runs, as_json=args.json))
    elif args.bench == "e2e":
        from jetstandby_bench.e2e import E2EBench
        from jetstandby_bench.e2e import run as run_e2e
        from jetstandby_bench.e2e_phases import LoadShape

        result = await run_e2e(
            E2EBench(
                duration=args.duration,
                warmup=args.warmup,
                lag_duration=args.lag_duration,
                shape=LoadShape(
                    client_procs=args.client_procs,
                    concurrency=args.concurrency,
                    connections=args.connections,
                ),
                failovers=args.failovers,
                failover_rate=args.failover_rate,
                memory_count=args.memory_count,
                baseline_count=args.baseline_count,
                runs=args.runs,
                profile_duration=args.profile_duration,
                skip_cluster=args.skip_cluster,
                skip_memory=args.skip_memory,
                skip_failover=args.skip_failover,
                skip_profile=args.skip_profile,
                report_dir=None if args.no_report else Path(args.report_dir),
                as_json=args.json,
            )
        )
    elif args.bench == "lag":
        from jetstandby_bench.e2e_phases import LoadShape
        from jetstandby_bench.lagruns import LagBench
        from jetstandby_bench.lagruns import run as run_lag

        result = await run_lag(
            LagBench(
                rate=args.rate,
                duration=args.duration,
                runs=args.runs,
                warmup_rate=args.warmup_rate,
                warmup=args.warmup,
                shape=LoadShape(client_procs=args.client_procs, connections=args.connections),
                standby_nice=args.standby_nice,
                check_exactly_once=args.check_exactly_once,
                as_json=args.json,
            )
        )
    elif args.bench == "bootstrap":
        from jetstandby_bench.bootstrap import BootstrapBench
        from jetstandby_bench.bootstrap import run as run_bootstrap

        result = await run_bootstrap(
            BootstrapBench(args.count, args.tail, args.runs, as_json=args.json)
        )
    elif args.bench == "faults":
        from jetstandby_bench.faults import FaultsBench
        from jetstandby_bench.faults import run as run_faults

        outcome = await run_faults(
            FaultsBench(cycles=args.cycles, only=args.only, as_json=args.json, keep=args.keep)
        )
        return EXIT_OK if outcome["valid"] else EXIT_FAILED
    else:
        from jetstandby_bench.journal import JournalBench
        from jetstandby_bench.journal import run as run_journal

        result = await run_journal(
            JournalBench(args.count, args.fsync_count, args.runs, as_json=args.json)
        )
    targets = result.get("targets", {}).values()
    return EXIT_OK if all(t["met"] for t in targets) else EXIT_FAILED


async def _server(args: argparse.Namespace, console: Console) -> int:

    from jetstandby.server import NatsServer

    server = NatsServer(
        port=args.port,
        store_dir=Path(args.store) if args.store else None,
        sync_always=args.durability == "fsync",
    )
    await server.start()
    console.print(f"nats-server with JetStream at {server.url} (store {server.store_dir})")
    console.print("Ctrl-C stops it")
    try:
        await asyncio.Event().wait()
    finally:
        await server.aclose()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    as_json = getattr(args, "json", False)
    # One console for logs and live views, so they do not tear each other; on stderr when
    # stdout is reserved for JSON.
    console = Console(stderr=as_json or args.command in ("run", "server", "submit"))
    _configure_logging(console, args.verbose, quiet=args.command == "bench" or as_json)
    from jetstandby import clicommands, clisnapshots

    handler = {
        "demo": _demo,
        "bench": _bench,
        "server": _server,
        "run": clicommands.run,
        "status": clicommands.status,
        "promote": clicommands.promote,
        "skip": clicommands.skip,
        "snapshot": clisnapshots.run,
        "submit": clicommands.submit,
    }[args.command]
    try:
        return asyncio.run(handler(args, console))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ExitStatus as status:
        return status.code
    except ConfigError as exc:
        print(f"jetstandby: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (JournalUnavailable, ServerError) as exc:
        print(f"jetstandby: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except TimeoutError:
        print("jetstandby: timed out", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except JetstandbyError as exc:
        print(f"jetstandby: {exc}", file=sys.stderr)
        return EXIT_FAILED
