"""Scenario 6: poison written straight into the journal's stream.

After some load the primary is killed; then, per kind (garbage bytes, an unknown command
type, an unknown version, a broken envelope, a stale epoch, an oversized payload), one
poison message and a few valid commands after it are published straight into the stream.
The standby must halt at the seq before the poison with an error naming its seq and the
reason, apply nothing after it, show it in health (``/readyz`` 503, ``halted``), refuse a
skip without the token, of another seq, or without a reason, and resume only after the one
valid ``POST /admin/skip``, which its log records with the reason.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Final

import msgspec

from jetstandby import wire
from jetstandby.config import JournalSettings
from jetstandby.engines.kv import add
from jetstandby.history import HistoryWriter
from jetstandby.journal.stream import close_quietly, connect
from jetstandby.procs import NodeProcess
from jetstandby.server import NatsServer
from jetstandby.state import marker_envelope
from jetstandby_bench.faults_common import (
    JOURNAL,
    Nodes,
    ScenarioResult,
    Workload,
    caught_up,
    verify,
)

KINDS: Final = (
    "garbage",
    "unknown_type",
    "unknown_version",
    "broken_envelope",
    "stale_epoch",
    "oversized",
)
#: Poison a standby can decode into an envelope: skipping it consumes its command seq.
DECODABLE: Final = frozenset({"unknown_type", "unknown_version", "stale_epoch", "oversized"})
AFTER: Final = 3
#: What the standby's error must mention, per kind (besides the seq).
REASONS: Final = {
    "garbage": "envelope",
    "unknown_type": "Frobnicate",
    "unknown_version": "version",
    "broken_envelope": "seq",
    "stale_epoch": "stale epoch",
    "oversized": "payload",
}


def _envelope(
    seq: int, epoch: int, ctype: str, version: int, payload: bytes, rid: str = ""
) -> bytes:
    return wire.encode(wire.Envelope(1, seq, epoch, 1, ctype, version, payload, rid))


def poison_body(kind: str, seq: int, epoch: int, max_payload: int) -> bytes:
    if kind == "garbage":
        return b"\xc1" + bytes(range(64))  # 0xc1 is never valid msgpack
    if kind == "unknown_type":
        return _envelope(seq, epoch, "Frobnicate", 1, add("k", 1))
    if kind == "unknown_version":
        return _envelope(seq, epoch, "Add", 9, add("k", 1))
    if kind == "broken_envelope":
        return msgspec.msgpack.encode([1, "seven", epoch, 1, "Add", 1, add("k", 1), ""])
    if kind == "stale_epoch":
        return _envelope(seq, epoch - 1, "Add", 1, add("k", 1))
    # Over what a primary may journal (max_payload less the header room), under what the
    # server takes without headers: only a direct write gets it into the stream.
    size = max_payload - wire.HEADER_ROOM // 2 - 64
    return _envelope(seq, epoch, "Put", 1, b"\x00" * size)


class Injector:
    """Publishes straight into the journal's stream (no fencing headers), and records the
    valid commands it writes in the history, as acknowledged at their seqs."""

    def __init__(self, nc: Any, history: HistoryWriter) -> None:
        self.nc, self.history = nc, history
        self.subject = JournalSettings(journal=JOURNAL).subject
        self.count = 0

    async def publish(self, body: bytes) -> int:
        ack = await self.nc.jetstream().publish(self.subject, body)
        return int(ack.seq)

    async def valid(self, seq: int, epoch: int) -> None:
        rid = f"operator-{self.count}"
        self.count += 1
        payload = add("after", 1)
        self.history.invoke(rid, "Add", payload, client="operator")
        await self.publish(_envelope(seq, epoch, "Add", 1, payload, rid))
        self.history.ok(rid, seq, b"")

    async def marker(self, seq: int, epoch: int) -> None:
        await self.publish(
            wire.encode(marker_envelope(seq=seq, epoch=epoch, node="op", timestamp_ns=1))
        )


async def _halted_at(standby: NodeProcess, last: int, stream_seq: int, kind: str) -> list[str]:
    """The standby's halt: at ``last``, naming the poison's seq and the reason, in health."""
    status = await standby.wait_status(lambda s: s["halted"] or s["last_applied_seq"] > last, 60)
    if not status["halted"]:
        return [f"{kind}: not halted; applied up to seq {status['last_applied_seq']}"]
    problems = []
    error = status["last_error"] or ""
    if status["last_applied_seq"] != last:
        problems.append(f"{kind}: halted at seq {status['last_applied_seq']}, not {last}")
    if str(stream_seq) not in error and str(last + 1) not in error:
        problems.append(f"{kind}: the error does not name the seq: {error!r}")
    if REASONS[kind].lower() not in error.lower():
        problems.append(f"{kind}: the error does not say {REASONS[kind]!r}: {error!r}")
    code, _ = await standby.http("GET", "/readyz")
    if code != 503:
        problems.append(f"{kind}: /readyz answered {code} while halted")
    return problems


async def _operator_skip(standby: NodeProcess, stream_seq: int, kind: str) -> list[str]:
    """Refused skips first (no token, another seq, no reason), then the one that resumes."""
    problems = []
    reason = f"poison {kind} in the fault suite"
    body: dict[str, Any] = {"stream_seq": stream_seq, "reason": reason}
    refusals = [
        (await standby.http("POST", "/admin/skip", body, token=None), 401),
        (await standby.http("POST", "/admin/skip", {**body, "stream_seq": stream_seq + 1}), 409),
        (await standby.http("POST", "/admin/skip", {**body, "reason": " "}), 400),
    ]
    for (code, answer), expected in refusals:
        if code != expected:
            problems.append(f"{kind}: a bad skip answered {code}, not {expected}: {answer}")
    code, answer = await standby.http("POST", "/admin/skip", body)
    if code != 200 or answer.get("stream_seq") != stream_seq:
        problems.append(f"{kind}: the skip answered {code}: {answer}")
    log = " ".join(standby.log.read_text(errors="replace").split())  # undo the line wrapping
    if f"SKIP of stream seq {stream_seq} " not in log or reason not in log:
        problems.append(f"{kind}: the skip of stream seq {stream_seq} is not in the log")
    return problems


async def _one_kind(
    standby: NodeProcess, injector: Injector, kind: str, max_payload: int, poison: set[int]
) -> list[str]:
    status = await caught_up(standby)
    last, epoch = status["last_applied_seq"], status["epoch"]
    if kind == "stale_epoch":  # a newer epoch first, so that the current one is stale
        epoch += 1
        await injector.marker(last + 1, epoch)
        await standby.wait_status(lambda s: s["last_applied_seq"] > last)
        last += 1
    stream_seq = await injector.publish(poison_body(kind, last + 1, epoch, max_payload))
    poison.add(stream_seq)
    first = last + (2 if kind in DECODABLE else 1)
    for seq in range(first, first + AFTER):
        await injector.valid(seq, epoch)
    problems = await _halted_at(standby, last, stream_seq, kind)
    if problems and "not halted" in problems[0]:
        return problems
    problems += await _operator_skip(standby, stream_seq, kind)
    end = first + AFTER - 1
    status = await standby.wait_status(lambda s: s["halted"] or s["last_applied_seq"] >= end, 60)
    if status["halted"] or status["last_applied_seq"] != end:
        problems.append(f"{kind}: after the skip at seq {status['last_applied_seq']}, not {end}")
    return problems


async def poison(cycles: int, workdir: Path, *, seed: int = 1) -> ScenarioResult:
    history_path = workdir / "history.jsonl"
    problems: list[str] = []
    poison_seqs: set[int] = set()
    facts: dict[str, Any] = {}
    async with NatsServer() as server, Nodes(workdir, server.url) as nodes:
        primary = await nodes.start("primary")
        standby = await nodes.start()
        with HistoryWriter(history_path) as history:
            async with Workload(server.url, history) as load:
                await load.until(300)
            primary.signal(signal.SIGKILL)
            await primary.wait()
            nc = await connect(server.url)
            try:
                injector = Injector(nc, history)
                for cycle in range(cycles):
                    for kind in KINDS:
                        found = await _one_kind(
                            standby, injector, kind, nc.max_payload, poison_seqs
                        )
                        facts[f"c{cycle}-{kind}"] = "ok" if not found else "FAILED"
                        problems += found
            finally:
                await close_quietly(nc)
            skipped = (await standby.status()).get("skipped", [])
            facts["skipped"] = [s["stream_seq"] for s in skipped]
            check, _ = await verify(
                server.url, history_path, [standby], skip=lambda s: s in poison_seqs
            )
    return ScenarioResult(
        "poison", cycles, check.acknowledged, check, facts=facts, problems=problems
    )
