"""Client histories and the checker that holds them against a journal (fault-injection suite).

A history is a JSONL file of client operations, one JSON object per line, tagged by ``type``::

    {"type":"invoke","request_id":"w0-7","time":1718000000.25,"client":"w0",
     "command_type":"Add","command_version":1,"payload_digest":"<sha256 hex>","payload":"<b64>"}
    {"type":"ok","request_id":"w0-7","time":...,"seq":42,"result_digest":"<sha256 hex>",
     "result":"<b64>","deduplicated":false,"attempts":1}
    {"type":"fail","request_id":"w0-8","time":...,"code":"bad_request","retriable":false,
     "error":"..."}
    {"type":"unknown","request_id":"w0-9","time":...,"reason":"deadline: ..."}

``payload`` and ``result`` appear only when they are small (:data:`SMALL_BYTES`); digests always.
``time`` is wall-clock seconds (``time.time()``), so histories of several processes interleave.

:func:`check` is pure: it takes the operations and the journal's envelopes (and optionally each
node's ``(seq, digest)``) and returns a :class:`CheckResult`. The categories are defined on
:func:`check`. Control commands (``$epoch`` markers, any ``$`` type) are not client operations.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Protocol, Self, TypeAlias

import msgspec

from jetstandby import wire
from jetstandby.engine import Engine
from jetstandby.errors import JetstandbyError, SubmitError
from jetstandby.state import ReplicatedState

if TYPE_CHECKING:
    from jetstandby.client import SubmitResult

__all__ = [
    "CheckResult",
    "DigestFinding",
    "Fail",
    "Finding",
    "HistoryError",
    "HistoryWriter",
    "Invoke",
    "Ok",
    "Op",
    "Submitter",
    "Unknown",
    "check",
    "check_files",
    "read_history",
]

#: Payloads and results up to this size are written out in full, larger ones as a digest only.
SMALL_BYTES: Final = 64
#: How many offending ids :meth:`CheckResult.explain` lists per category by default.
EXPLAIN_LIMIT: Final = 5
#: The ``SubmitError.code`` meaning no primary answered in time: the outcome is unknown.
DEADLINE_CODE: Final = "deadline"


class HistoryError(JetstandbyError, ValueError):
    """A history file line that is not a history operation; names the file and line."""


# -- the operations ------------------------------------------------------------------------


class Invoke(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="invoke"):
    """A client is about to submit ``request_id``."""

    request_id: str
    time: float
    command_type: str
    command_version: int = 1
    payload_digest: str = ""
    payload: bytes | None = None
    client: str = ""


class Ok(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="ok"):
    """``request_id`` was acknowledged at ``seq``."""

    request_id: str
    time: float
    seq: int
    result_digest: str = ""
    result: bytes | None = None
    deduplicated: bool = False
    attempts: int = 1


class Fail(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="fail"):
    """``request_id`` was refused with ``code``. A ``retriable`` refusal is not definite."""

    request_id: str
    time: float
    code: str
    retriable: bool = False
    error: str = ""


class Unknown(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="unknown"):
    """``request_id``'s outcome is unknown (deadline, timeout, lost connection, cancellation)."""

    request_id: str
    time: float
    reason: str = ""


Op: TypeAlias = Invoke | Ok | Fail | Unknown

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Op)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _small(data: bytes) -> bytes | None:
    return data if len(data) <= SMALL_BYTES else None


class Submitter(Protocol):
    """What :meth:`HistoryWriter.submit` drives: :class:`jetstandby.client.Client`."""

    async def submit(
        self,
        command_type: str,
        command_version: int,
        payload: bytes,
        *,
        request_id: str | None = None,
        deadline: float = ...,
    ) -> SubmitResult: ...


class HistoryWriter:
    """Appends operations to a JSONL history, one ``write`` per line, line-buffered.

    Each call writes one short line synchronously (microseconds on a local disk), so it is
    fine to call from the event loop. The file is opened for append, so several writers
    (processes) may share it. Use as a context manager or call :meth:`close` (idempotent);
    recording after close raises :class:`HistoryError`. ``clock`` stamps ``time``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._file = self.path.open("a", encoding="utf-8", buffering=1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def invoke(
        self,
        request_id: str,
        command_type: str,
        payload: bytes,
        *,
        command_version: int = 1,
        client: str = "",
    ) -> None:
        if not request_id:
            raise HistoryError("an operation needs a non-empty request id")
        self._write(
            Invoke(
                request_id=request_id,
                time=self._clock(),
                command_type=command_type,
                command_version=command_version,
                payload_digest=_digest(payload),
                payload=_small(payload),
                client=client,
            )
        )

    def ok(
        self,
        request_id: str,
        seq: int,
        result: bytes,
        *,
        deduplicated: bool = False,
        attempts: int = 1,
    ) -> None:
        self._write(
            Ok(
                request_id=request_id,
                time=self._clock(),
                seq=seq,
                result_digest=_digest(result),
                result=_small(result),
                deduplicated=deduplicated,
                attempts=attempts,
            )
        )

    def fail(self, request_id: str, code: str, *, retriable: bool = False, error: str = "") -> None:
        self._write(
            Fail(
                request_id=request_id,
                time=self._clock(),
                code=code,
                retriable=retriable,
                error=error,
            )
        )

    def unknown(self, request_id: str, reason: str = "") -> None:
        self._write(Unknown(request_id=request_id, time=self._clock(), reason=reason))

    def error(self, request_id: str, exc: SubmitError) -> None:
        """Record a :class:`SubmitError`: ``deadline`` as unknown, anything else as a fail."""
        if exc.code == DEADLINE_CODE:
            self.unknown(request_id, f"{exc.code}: {exc}")
        else:
            self.fail(request_id, exc.code, retriable=exc.retriable, error=str(exc))

    async def submit(
        self,
        client: Submitter,
        command_type: str,
        payload: bytes,
        *,
        request_id: str,
        command_version: int = 1,
        deadline: float = 30.0,
        client_name: str = "",
    ) -> SubmitResult:
        """``client.submit`` with the invoke and its outcome recorded; returns or re-raises.

        A :class:`SubmitError` is recorded by :meth:`error`; any other exception (including
        cancellation) as unknown, since the request may already be on its way.
        """
        self.invoke(
            request_id, command_type, payload, command_version=command_version, client=client_name
        )
        try:
            out = await client.submit(
                command_type, command_version, payload, request_id=request_id, deadline=deadline
            )
        except SubmitError as exc:
            self.error(request_id, exc)
            raise
        except BaseException as exc:
            self.unknown(request_id, f"{type(exc).__name__}: {exc}")
            raise
        self.ok(
            request_id, out.seq, out.result, deduplicated=out.deduplicated, attempts=out.attempts
        )
        return out

    def _write(self, op: Op) -> None:
        if self._file.closed:
            raise HistoryError(f"history {self.path} is closed")
        self._file.write(_encoder.encode(op).decode() + "\n")


def read_history(path: str | os.PathLike[str]) -> list[Op]:
    """Every operation in the history at ``path``, in file order.

    A last line without its newline that does not parse is a write torn by a crash, and is
    skipped; any other bad line raises :class:`HistoryError` naming the line.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    ops: list[Op] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ops.append(_decoder.decode(line))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            if number == len(lines):  # no newline after it: torn by a crash mid-write
                break
            raise HistoryError(f"{path}:{number}: not a history operation: {exc}") from exc
    return ops


# -- the checker -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One offending request id, the journal seqs involved, and what is wrong."""

    request_id: str
    seqs: tuple[int, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class DigestFinding:
    """A node whose digest disagrees (with the journal's replay, or with its peers)."""

    node: str
    seq: int
    digest: str
    expected: str | None
    detail: str


@dataclass(frozen=True)
class CheckResult:
    """What :func:`check` found. ``valid`` only if nothing was lost, duplicated, unexpected or
    failed-but-present, and every digest agrees."""

    lost: tuple[Finding, ...]
    duplicated: tuple[Finding, ...]
    unexpected: tuple[Finding, ...]
    failed_but_present: tuple[Finding, ...]
    recovered: tuple[Finding, ...]
    digest_disagreements: tuple[DigestFinding, ...]
    invoked: int
    acknowledged: int
    failed: int
    indeterminate: int
    indeterminate_absent: int
    journal_commands: int
    reference_digests: dict[int, str] = field(default_factory=dict)

    @property
    def digests_agree(self) -> bool:
        return not self.digest_disagreements

    @property
    def valid(self) -> bool:
        violations = (self.lost, self.duplicated, self.unexpected, self.failed_but_present)
        return not any(violations) and self.digests_agree

    def summary(self) -> dict[str, int | bool]:
        """Counts by category, ``digests_agree`` and ``valid``: ready for JSON."""
        return {
            "valid": self.valid,
            "invoked": self.invoked,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "indeterminate": self.indeterminate,
            "recovered": len(self.recovered),
            "indeterminate_absent": self.indeterminate_absent,
            "journal_commands": self.journal_commands,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "failed_but_present": len(self.failed_but_present),
            "digest_disagreements": len(self.digest_disagreements),
            "digests_agree": self.digests_agree,
        }

    def explain(self, limit: int = EXPLAIN_LIMIT) -> str:
        """A readable report: the counts, then the first ``limit`` offenders of each kind."""
        counts = ", ".join(f"{k}={v}" for k, v in self.summary().items() if k != "valid")
        lines = [f"history check: {'VALID' if self.valid else 'INVALID'} ({counts})"]
        for name in ("lost", "duplicated", "unexpected", "failed_but_present"):
            findings: tuple[Finding, ...] = getattr(self, name)
            if findings:
                lines.append(f"{name} ({len(findings)}):")
                lines += [
                    f"  {f.request_id or '<no id>'} seqs={list(f.seqs)}: {f.detail}"
                    for f in findings[:limit]
                ]
                if len(findings) > limit:
                    lines.append(f"  ... and {len(findings) - limit} more")
        if self.digest_disagreements:
            lines.append(f"digest disagreements ({len(self.digest_disagreements)}):")
            lines += [
                f"  node {d.node} at seq {d.seq}: {d.detail}"
                for d in self.digest_disagreements[:limit]
            ]
        return "\n".join(lines)


@dataclass
class _Attempts:
    """Everything the history says about one request id."""

    invokes: int = 0
    acks: list[int] = field(default_factory=list)
    definite_fails: list[str] = field(default_factory=list)
    indeterminate: int = 0  # unknown outcomes and retriable refusals

    def add(self, op: Op) -> None:
        if isinstance(op, Invoke):
            self.invokes += 1
        elif isinstance(op, Ok):
            self.acks.append(op.seq)
        elif isinstance(op, Fail) and not op.retriable:
            self.definite_fails.append(op.code)
        else:
            self.indeterminate += 1

    @property
    def failed(self) -> bool:
        """Refused every time it was sent: no ack, no unknown, no attempt left unanswered."""
        completions = len(self.acks) + len(self.definite_fails) + self.indeterminate
        pending = max(0, self.invokes - completions)
        return (
            not self.acks and bool(self.definite_fails) and not self.indeterminate and not pending
        )


def check(
    history: Iterable[Op],
    journal: Iterable[wire.Envelope],
    digests: dict[str, tuple[int, str]] | None = None,
    *,
    engine_factory: Callable[[], Engine] | None = None,
) -> CheckResult:
    """Hold a client history against a journal (and the nodes' digests). Pure.

    Per request id, the history's operations combine (retries of one id are one operation):
    it is *acknowledged* if any ``ok``; *failed* if it has only definite (non-retriable)
    ``fail`` outcomes; otherwise *indeterminate* (``unknown``, retriable ``fail``, or an
    invoke with no outcome). User commands in the journal are grouped by request id:

    - **lost**: acknowledged, but some acknowledged seq does not hold a user command with
      that request id (it is elsewhere, or nowhere, or the journal ends before it);
    - **duplicated**: a request id present as a user command more than once;
    - **unexpected**: a user command whose request id no operation names (an empty request
      id counts once per command);
    - **failed_but_present**: failed, yet present in the journal;
    - **recovered** (not a violation): indeterminate and present exactly once.

    ``digests`` maps node name to ``(seq, digest hex)``. With ``engine_factory`` the journal
    is replayed through a fresh :class:`ReplicatedState` and each node is compared with the
    reference digest at its own seq (so nodes at a common seq are compared with each other
    too). Without it, all nodes must report the same seq and the same digest.
    """
    journal = list(journal)
    attempts: defaultdict[str, _Attempts] = defaultdict(_Attempts)
    for op in history:
        attempts[op.request_id].add(op)
    where: defaultdict[str, list[int]] = defaultdict(list)
    by_seq: dict[int, str] = {}
    unexpected: list[Finding] = []
    for env in journal:
        if env.is_control:
            continue
        by_seq[env.seq] = env.request_id
        if not env.request_id:
            unexpected.append(Finding("", (env.seq,), "a user command with no request id"))
        else:
            where[env.request_id].append(env.seq)
    for rid, seqs in where.items():
        if rid not in attempts:
            unexpected.append(Finding(rid, tuple(seqs), "in the journal, never invoked"))
    unexpected.sort(key=lambda f: f.seqs)
    duplicated = [
        Finding(rid, tuple(seqs), f"journaled {len(seqs)} times")
        for rid, seqs in where.items()
        if len(seqs) > 1
    ]
    lost, failed_present, recovered, counts = _classify(attempts, where, by_seq)
    disagreements, reference = _check_digests(journal, digests or {}, engine_factory)
    return CheckResult(
        lost=tuple(lost),
        duplicated=tuple(duplicated),
        unexpected=tuple(unexpected),
        failed_but_present=tuple(failed_present),
        recovered=tuple(recovered),
        digest_disagreements=tuple(disagreements),
        invoked=len(attempts),
        acknowledged=counts["acknowledged"],
        failed=counts["failed"],
        indeterminate=counts["indeterminate"],
        indeterminate_absent=counts["indeterminate_absent"],
        journal_commands=len(by_seq),
        reference_digests=reference,
    )


def _classify(
    attempts: dict[str, _Attempts], where: dict[str, list[int]], by_seq: dict[int, str]
) -> tuple[list[Finding], list[Finding], list[Finding], Counter[str]]:
    lost: list[Finding] = []
    failed_present: list[Finding] = []
    recovered: list[Finding] = []
    counts: Counter[str] = Counter()
    for rid, seen in attempts.items():
        present = where.get(rid, [])
        if seen.acks:
            counts["acknowledged"] += 1
            wrong = sorted({seq for seq in seen.acks if by_seq.get(seq) != rid})
            if wrong:
                found = f"found at {present}" if present else "not in the journal"
                lost.append(Finding(rid, tuple(wrong), f"acknowledged at {wrong}, {found}"))
        elif seen.failed:
            counts["failed"] += 1
            if present:
                codes = ",".join(sorted(set(seen.definite_fails)))
                failed_present.append(Finding(rid, tuple(present), f"refused ({codes}), present"))
        else:
            counts["indeterminate"] += 1
            if len(present) == 1:
                recovered.append(Finding(rid, tuple(present), "outcome unknown, present once"))
            elif not present:
                counts["indeterminate_absent"] += 1
    return lost, failed_present, recovered, counts


def _check_digests(
    journal: list[wire.Envelope],
    digests: dict[str, tuple[int, str]],
    engine_factory: Callable[[], Engine] | None,
) -> tuple[list[DigestFinding], dict[int, str]]:
    if not digests:
        return [], {}
    if engine_factory is None:
        return _compare_peers(digests), {}
    reference, halted = _reference_digests(
        journal, {s for s, _ in digests.values()}, engine_factory
    )
    last_seq = journal[-1].seq if journal else 0
    findings = []
    for node, (seq, digest) in sorted(digests.items()):
        expected = reference.get(seq)
        if expected is None:
            why = halted or f"the journal ends at seq {last_seq}"
            detail = f"no reference digest at seq {seq}: {why}"
        elif digest.lower() != expected:
            detail = f"digest {digest[:16]}… differs from the journal's {expected[:16]}…"
        else:
            continue
        findings.append(DigestFinding(node, seq, digest, expected, detail))
    return findings, reference


def _compare_peers(digests: dict[str, tuple[int, str]]) -> list[DigestFinding]:
    seqs = {seq for seq, _ in digests.values()}
    distinct = {digest.lower() for _, digest in digests.values()}
    if len(seqs) > 1:
        detail = f"no common seq (nodes at {sorted(seqs)}); pass engine_factory to replay"
    elif len(distinct) > 1:
        detail = f"{len(distinct)} different digests among {len(digests)} nodes at one seq"
    else:
        return []
    return [DigestFinding(n, s, d, None, detail) for n, (s, d) in sorted(digests.items())]


def _reference_digests(
    journal: list[wire.Envelope], wanted: set[int], engine_factory: Callable[[], Engine]
) -> tuple[dict[int, str], str | None]:
    """The replayed state's digest at each wanted seq (the one nodes show in their status:
    see :meth:`ReplicatedState.compared_digest`); and why replay halted, if it did."""
    state = ReplicatedState(engine_factory())
    reference: dict[int, str] = {}
    if 0 in wanted:
        reference[0] = state.compared_digest().hex()
    for env in journal:
        # A checkpoint carries no state; every other envelope goes through, as on a node.
        if not env.is_control or env.command_type == wire.EPOCH_MARKER:
            try:
                state.apply(env)
            except Exception as exc:
                return reference, f"replaying the journal halted at seq {env.seq}: {exc!r}"
        if env.seq in wanted:
            reference[env.seq] = state.compared_digest().hex()
    return reference, None


def check_files(
    history_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    journal_envelopes: Iterable[wire.Envelope],
    digests: dict[str, tuple[int, str]] | None = None,
    *,
    engine_factory: Callable[[], Engine] | None = None,
) -> CheckResult:
    """:func:`check` on the histories in one or more files (several writers' files merge)."""
    if isinstance(history_paths, str | os.PathLike):
        history_paths = [history_paths]
    ops = [op for path in history_paths for op in read_history(path)]
    return check(ops, journal_envelopes, digests, engine_factory=engine_factory)
