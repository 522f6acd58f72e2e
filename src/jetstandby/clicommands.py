"""The node-facing commands of the CLI: ``run``, ``status``, ``promote``, ``submit``.

Each returns an exit code from :mod:`jetstandby.cli`; only that module configures logging.
The admin API is spoken with the standard library's HTTP client, run in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from jetstandby import cli, runconfig
from jetstandby.client import Client
from jetstandby.errors import ConfigError, SubmitError
from jetstandby.status import Role


async def run(args: argparse.Namespace, console: Console) -> int:
    flags = {
        "role": args.role,
        "engine": args.engine,
        "nats": args.nats,
        "admin": args.admin,
        "node_id": args.node_id,
        "journal": args.journal,
        "token_file": args.token_file,
        "max_promote_lag": args.max_promote_lag,
        "stay_up": args.stay_up,
        "durability": args.durability,
    }
    config = runconfig.load(file=Path(args.config) if args.config else None, flags=flags)
    from jetstandby.runner import run_node

    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)

    def ready(line: str) -> None:
        print(line, flush=True)

    try:
        role, deposed = await run_node(config, on_ready=ready)
    except asyncio.CancelledError:
        return cli.EXIT_OK
    if role is Role.FENCED:
        return cli.EXIT_FENCED if deposed else cli.EXIT_FAILED
    return cli.EXIT_OK


def _http(method: str, url: str, body: Any, token: str | None) -> tuple[int, Any]:
    from jetstandby.procs import http_json

    try:
        return http_json(method, url, body, token)
    except OSError as exc:
        raise ConfigError("--admin", f"cannot reach {url}: {exc}") from exc


async def _get_status(admin: str) -> dict[str, Any]:
    code, body = await asyncio.to_thread(_http, "GET", admin.rstrip("/") + "/status", None, None)
    if code != 200:
        raise ConfigError("--admin", f"GET /status answered {code}: {body}")
    return dict(body)


def _status_table(status: dict[str, Any]) -> Table:
    table = Table(title=f"node {status['node_id']}: {status['role']} (epoch {status['epoch']})")
    table.add_column("field")
    table.add_column("value", justify="right")
    for key, value in status.items():
        if key != "transitions":
            table.add_row(key, str(value))
    return table


async def status(args: argparse.Namespace, console: Console) -> int:
    if not args.watch:
        current = await _get_status(args.admin)
        if args.json:
            print(json.dumps(current))
        else:
            console.print(_status_table(current))
        return cli.EXIT_OK
    bar = Progress(
        TextColumn("replayed"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,}")
    )
    task = bar.add_task("replay", total=1)
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            current = await _get_status(args.admin)
            bar.update(
                task,
                completed=current["replay_cursor_seq"] or 0,
                total=max(current["latest_stream_seq"] or 0, 1),
            )
            grid = Table.grid()
            grid.add_row(_status_table(current))
            grid.add_row(bar)
            live.update(grid)
            await asyncio.sleep(0.5)


def _token(args: argparse.Namespace) -> str | None:
    from jetstandby.admin import load_token

    if args.token_file:
        return load_token(file=args.token_file)
    return load_token(env="JETSTANDBY_TOKEN") if os.environ.get("JETSTANDBY_TOKEN") else None


async def promote(args: argparse.Namespace, console: Console) -> int:
    if args.force and not args.reason:
        raise ConfigError("--reason", "is required with --force")
    body = {"force": args.force, "reason": args.reason, "wait": args.wait, "timeout": args.timeout}
    return await admin_action(args, console, "promote", body)


async def skip(args: argparse.Namespace, console: Console) -> int:
    body = {"stream_seq": args.stream_seq, "reason": args.reason}
    return await admin_action(args, console, "skip", body)


async def admin_action(
    args: argparse.Namespace, console: Console, action: str, body: dict[str, Any]
) -> int:
    """POST an admin action; 409 (refused), 503 and 504 are failures, any other error usage."""
    url = args.admin.rstrip("/") + f"/admin/{action}"
    code, answer = await asyncio.to_thread(_http, "POST", url, body, _token(args))
    console.print_json(data=answer)
    if code == 200:
        return cli.EXIT_OK
    detail = answer.get("reason") or answer.get("detail") or answer.get("error")
    print(f"jetstandby: {action} answered {code}: {detail}", file=sys.stderr)
    return cli.EXIT_FAILED if code in (409, 503, 504) else cli.EXIT_USAGE


async def submit(args: argparse.Namespace, console: Console) -> int:
    try:
        fields = json.loads(args.payload)
    except ValueError as exc:
        raise ConfigError("JSON", f"not valid JSON: {exc}") from exc
    # The whole command is bounded too: connecting and closing must not hang a shell.
    async with runconfig.nats_flag(args.nats):
        client = await Client.connect(args.nats, args.journal)
    async with asyncio.timeout(args.deadline + 15), client:
        try:
            out = await client.submit(
                args.command_type,
                args.command_version,
                msgspec.msgpack.encode(fields),
                request_id=args.request_id,
                deadline=args.deadline,
            )
        except SubmitError as exc:
            print(f"jetstandby: {exc}", file=sys.stderr)
            return cli.EXIT_UNAVAILABLE if exc.retriable else cli.EXIT_FAILED
    try:
        result: Any = msgspec.msgpack.decode(out.result)
    except (msgspec.DecodeError, UnicodeDecodeError):
        result = out.result.hex()
    print(
        json.dumps(
            {
                "seq": out.seq,
                "request_id": out.request_id,
                "deduplicated": out.deduplicated,
                "result": result,
            },
            default=str,
        )
    )
    return cli.EXIT_OK
