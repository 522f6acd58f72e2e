"""``jetstandby snapshot take|list|verify``.

``take`` asks a standby through its admin API; ``list`` and ``verify`` read the journal's
snapshot bucket straight from NATS, so they work with every node down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from jetstandby import cli, clicommands, runconfig
from jetstandby.bootstrap import StreamBounds, stream_bounds
from jetstandby.config import JournalSettings
from jetstandby.engine import load_engine
from jetstandby.errors import SnapshotError
from jetstandby.journal.stream import close_quietly, connect
from jetstandby.snapshots import SnapshotMeta, SnapshotStore, load_verified
from jetstandby.state import ReplicatedState


async def run(args: argparse.Namespace, console: Console) -> int:
    return await {"take": take, "list": list_, "verify": verify}[args.snapshot](args, console)


async def take(args: argparse.Namespace, console: Console) -> int:
    body = {"reason": args.reason}
    return await clicommands.admin_action(args, console, "snapshot", body)


@contextlib.asynccontextmanager
async def _store(args: argparse.Namespace) -> AsyncIterator[tuple[SnapshotStore, StreamBounds]]:
    settings = JournalSettings(journal=args.journal)
    async with runconfig.nats_flag(args.nats):
        nc = await connect(args.nats, name="jetstandby-snapshot-cli")
    try:
        bounds = await stream_bounds(nc, settings)
        async with await SnapshotStore.open(nc, settings, create=False) as store:
            yield store, bounds
    finally:
        await close_quietly(nc)


async def list_(args: argparse.Namespace, console: Console) -> int:
    async with _store(args) as (store, _):
        metas = await store.list()
    if args.json:
        print(msgspec.json.encode(metas).decode())
        return cli.EXIT_OK
    table = Table(title=f"snapshots of journal {args.journal}, newest first")
    for column in ("name", "seq", "stream seq", "epoch", "engine", "bytes", "node", "taken"):
        table.add_column(column)
    for m in metas:
        table.add_row(
            m.name,
            str(m.seq),
            str(m.stream_seq),
            str(m.epoch),
            f"{m.engine_name} v{m.engine_version}",
            f"{m.size:,}",
            m.node_id,
            str(m.taken_at_unix_ms),
        )
    console.print(table)
    return cli.EXIT_OK


async def verify(args: argparse.Namespace, console: Console) -> int:
    """Every snapshot (or ``--name``) through the checks a bootstrapping node makes.

    Exit 0 when the named one passes, or without a name when at least one does (a new
    standby can bootstrap from it); else 1."""
    engine_spec = args.engine
    load_engine(engine_spec)  # a bad --engine is a usage error, before any I/O

    def new_state() -> ReplicatedState:
        return ReplicatedState(load_engine(engine_spec))

    results: list[dict[str, Any]] = []
    async with _store(args) as (store, bounds):
        metas = [m for m in await store.list() if args.name in (None, m.name)]
        for meta in metas:
            results.append(await _verify_one(store, meta, new_state, bounds))
    if args.name and not metas:
        raise SnapshotError(f"no snapshot named {args.name!r}", reason="missing")
    if args.json:
        print(json.dumps(results))
    else:
        table = Table(
            title=f"verification against stream seqs {bounds.first_seq}..{bounds.last_seq}"
        )
        for column in ("name", "seq", "verdict"):
            table.add_column(column)
        for r in results:
            table.add_row(r["name"], str(r["seq"]), "ok" if r["ok"] else r["refusal"])
        console.print(table)
    return cli.EXIT_OK if any(r["ok"] for r in results) else cli.EXIT_FAILED


async def _verify_one(
    store: SnapshotStore, meta: SnapshotMeta, new_state: Any, bounds: StreamBounds
) -> dict[str, Any]:
    try:
        await load_verified(
            store,
            meta,
            new_state,
            stream_first_seq=bounds.first_seq,
            stream_last_seq=bounds.last_seq,
            stream_created=bounds.created,
        )
    except SnapshotError as exc:
        return {"name": meta.name, "seq": meta.seq, "ok": False, "refusal": str(exc)}
    return {"name": meta.name, "seq": meta.seq, "ok": True, "refusal": None}
