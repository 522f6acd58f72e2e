"""jetstandby.history: the JSONL history, and a checker that can fail.

Hand-built cases cover each category; a property test builds random valid runs, then injects
one fault and expects exactly that counter to move; the issue's self-test runs a standby that
skips every 1000th command and expects its digest to be flagged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jetstandby.client import SubmitResult
from jetstandby.engine import load_engine
from jetstandby.engines import kv
from jetstandby.errors import SubmitError
from jetstandby.history import (
    SMALL_BYTES,
    CheckResult,
    Fail,
    HistoryError,
    HistoryWriter,
    Invoke,
    Ok,
    Op,
    Unknown,
    check,
    check_files,
    read_history,
)
from jetstandby.state import ReplicatedState, marker_envelope
from jetstandby.wire import Envelope

VIOLATIONS: Final = ("lost", "duplicated", "unexpected", "failed_but_present")


def marker(seq: int, epoch: int = 1) -> Envelope:
    return marker_envelope(seq=seq, epoch=epoch, node=f"n{epoch}", timestamp_ns=seq)


def put(seq: int, request_id: str, *, epoch: int = 1, key: str | None = None) -> Envelope:
    payload = kv.put(key or request_id or f"k{seq}", f"v{seq}")
    return Envelope(1, seq, epoch, 1_000 + seq, "Put", 1, payload, request_id)


def invoke(rid: str) -> Invoke:
    return Invoke(request_id=rid, time=0.0, command_type="Put")


def ok(rid: str, seq: int) -> Ok:
    return Ok(request_id=rid, time=1.0, seq=seq)


def fail(rid: str, code: str = "bad_request", *, retriable: bool = False) -> Fail:
    return Fail(request_id=rid, time=1.0, code=code, retriable=retriable)


def unknown(rid: str) -> Unknown:
    return Unknown(request_id=rid, time=1.0, reason="deadline")


def kv_engine() -> kv.KeyValueEngine:
    return kv.KeyValueEngine()


def digest_at(journal: list[Envelope], seq: int) -> str:
    state = ReplicatedState(load_engine("kv"))
    for env in journal:
        if env.seq > seq:
            break
        state.apply(env)
    return state.engine.digest().hex()


def counts(result: CheckResult) -> dict[str, int]:
    summary = result.summary()
    return {name: int(summary[name]) for name in (*VIOLATIONS, "digest_disagreements")}


# -- the history file ------------------------------------------------------------------------


def test_writer_and_reader_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    ticks = itertools.count(100)
    big = b"x" * (SMALL_BYTES + 1)
    with HistoryWriter(path, clock=lambda: float(next(ticks))) as history:
        history.invoke("a", "Put", kv.put("k", "v"), client="w0")
        history.ok("a", 2, b"\x81\xa2ok\xc3", attempts=2)
        history.invoke("b", "Put", big)
        history.fail("b", "bad_request", error="no")
        history.invoke("c", "Add", b"", command_version=3)
        history.unknown("c", "deadline: no primary")
    assert history.closed
    ops = read_history(path)
    assert [type(op) for op in ops] == [Invoke, Ok, Invoke, Fail, Invoke, Unknown]
    first, acked, large = ops[0], ops[1], ops[2]
    assert isinstance(first, Invoke) and first.payload == kv.put("k", "v")
    assert first.client == "w0" and first.time == 100.0
    assert isinstance(acked, Ok) and (acked.seq, acked.attempts, acked.result) == (
        2,
        2,
        b"\x81\xa2ok\xc3",
    )
    assert isinstance(large, Invoke) and large.payload is None and len(large.payload_digest) == 64
    # Each line is one self-describing JSON object.
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    assert msgspec.json.decode(lines[3]) == {
        "type": "fail",
        "request_id": "b",
        "time": 103.0,
        "code": "bad_request",
        "error": "no",
    }
    with pytest.raises(HistoryError, match="closed"):
        history.unknown("d")


def test_reader_skips_a_torn_last_line_but_not_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as history:
        history.invoke("a", "Put", b"")
    with path.open("a") as f:
        f.write('{"type":"ok","request_id":"a","ti')  # a crash mid-write
    assert [op.request_id for op in read_history(path)] == ["a"]
    with path.open("a") as f:
        f.write("\n")
    with pytest.raises(HistoryError, match=r"h\.jsonl:2"):
        read_history(path)
    with pytest.raises(HistoryError, match="non-empty"), HistoryWriter(tmp_path / "o") as other:
        other.invoke("", "Put", b"")


class FakeClient:
    """Answers each submit with the next scripted outcome."""

    def __init__(self, *outcomes: SubmitResult | BaseException) -> None:
        self.outcomes = list(outcomes)

    async def submit(
        self,
        command_type: str,
        command_version: int,
        payload: bytes,
        *,
        request_id: str | None = None,
        deadline: float = 30.0,
    ) -> SubmitResult:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


async def test_writer_submit_records_each_outcome(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    client = FakeClient(
        SubmitResult(7, b"r", "a", deduplicated=True, attempts=3),
        SubmitError("deadline passed", code="deadline", retriable=True),
        SubmitError("unsupported: Nope", code="unsupported"),
        ConnectionResetError("gone"),
    )
    with HistoryWriter(path) as history:
        assert (await history.submit(client, "Put", b"p", request_id="a")).seq == 7
        for rid, error in (("b", SubmitError), ("c", SubmitError), ("d", ConnectionResetError)):
            with pytest.raises(error):
                await history.submit(client, "Put", b"p", request_id=rid, client_name="w1")
    ops = read_history(path)
    assert [op.request_id for op in ops if isinstance(op, Invoke)] == ["a", "b", "c", "d"]
    outcomes = {op.request_id: op for op in ops if not isinstance(op, Invoke)}
    acked = outcomes["a"]
    assert isinstance(acked, Ok) and (acked.seq, acked.result, acked.attempts) == (7, b"r", 3)
    assert acked.deduplicated
    assert isinstance(outcomes["b"], Unknown) and outcomes["b"].reason.startswith("deadline")
    assert isinstance(outcomes["c"], Fail) and outcomes["c"].code == "unsupported"
    assert not outcomes["c"].retriable
    assert isinstance(outcomes["d"], Unknown) and "ConnectionResetError" in outcomes["d"].reason
    result = check(ops, [marker(1), put(7, "a")])
    assert result.valid
    assert (result.acknowledged, result.failed, result.indeterminate) == (1, 1, 2)


# -- the checker on hand-built runs -----------------------------------------------------------


def clean_run() -> tuple[list[Op], list[Envelope]]:
    """Every kind of outcome, none of them a violation."""
    history: list[Op] = [
        invoke("acked"), ok("acked", 2),
        invoke("retried"), unknown("retried"), invoke("retried"), ok("retried", 3),
        invoke("refused"), fail("refused"),
        invoke("timed-out"), unknown("timed-out"),  # present once: recovered
        invoke("not-primary"), fail("not-primary", "not_primary", retriable=True),
        invoke("never-arrived"), unknown("never-arrived"),  # absent: fine
        invoke("in-flight"),  # no outcome recorded at all, present: recovered
    ]  # fmt: skip
    journal = [
        marker(1), put(2, "acked"), put(3, "retried"), put(4, "timed-out"),
        marker(5, epoch=2), put(6, "not-primary", epoch=2), put(7, "in-flight", epoch=2),
    ]  # fmt: skip
    return history, journal


def test_a_clean_run_is_valid() -> None:
    history, journal = clean_run()
    nodes = {"a": (7, digest_at(journal, 7)), "b": (7, digest_at(journal, 7))}
    result = check(history, journal, nodes, engine_factory=kv_engine)
    assert result.valid, result.explain()
    assert result.summary() == {
        "valid": True,
        "invoked": 7,
        "acknowledged": 2,
        "failed": 1,
        "indeterminate": 4,
        "recovered": 3,
        "indeterminate_absent": 1,
        "journal_commands": 5,
        "lost": 0,
        "duplicated": 0,
        "unexpected": 0,
        "failed_but_present": 0,
        "digest_disagreements": 0,
        "digests_agree": True,
    }
    assert {f.request_id: f.seqs for f in result.recovered} == {
        "timed-out": (4,),
        "not-primary": (6,),
        "in-flight": (7,),
    }
    assert result.reference_digests == {7: digest_at(journal, 7)}
    assert result.explain().startswith("history check: VALID")


def test_lost_acknowledged_but_missing_or_elsewhere() -> None:
    history, journal = clean_run()
    history += [invoke("phantom"), ok("phantom", 8), invoke("moved"), ok("moved", 5)]
    journal.append(put(8, "moved", epoch=2))
    result = check(history, journal)
    assert counts(result) == {"lost": 2, "duplicated": 0, "unexpected": 0,
                              "failed_but_present": 0, "digest_disagreements": 0}  # fmt: skip
    lost = {f.request_id: f for f in result.lost}
    assert lost["phantom"].seqs == (8,) and "not in the journal" in lost["phantom"].detail
    assert lost["moved"].seqs == (5,) and "found at [8]" in lost["moved"].detail  # 5 is a marker
    assert not result.valid
    text = result.explain()
    assert "INVALID" in text and "lost (2):" in text and "phantom seqs=[8]" in text


def test_lost_when_the_journal_ends_before_the_ack() -> None:
    history, journal = clean_run()
    result = check(history, journal[:2])  # truncated after seq 2: "retried" at 3 is gone
    assert [f.request_id for f in result.lost] == ["retried"]


def test_duplicated_counts_each_request_id_once() -> None:
    history, journal = clean_run()
    journal += [put(8, "acked", epoch=2), put(9, "acked", epoch=2), put(10, "timed-out", epoch=2)]
    result = check(history, journal)
    assert counts(result)["duplicated"] == 2 and counts(result)["lost"] == 0
    assert {f.request_id: f.seqs for f in result.duplicated} == {
        "acked": (2, 8, 9),
        "timed-out": (4, 10),
    }
    assert "timed-out" not in {f.request_id for f in result.recovered}


def test_unexpected_never_invoked_or_without_a_request_id() -> None:
    history, journal = clean_run()
    journal += [put(8, "stranger", epoch=2), put(9, "", epoch=2, key="anon")]
    result = check(history, journal)
    assert counts(result) == {"lost": 0, "duplicated": 0, "unexpected": 2,
                              "failed_but_present": 0, "digest_disagreements": 0}  # fmt: skip
    assert [(f.request_id, f.seqs) for f in result.unexpected] == [("stranger", (8,)), ("", (9,))]
    assert "<no id> seqs=[9]" in result.explain()


def test_failed_but_present_only_for_definite_refusals() -> None:
    history, journal = clean_run()
    journal.append(put(8, "refused", epoch=2))
    result = check(history, journal)
    assert [(f.request_id, f.seqs) for f in result.failed_but_present] == [("refused", (8,))]
    assert "bad_request" in result.failed_but_present[0].detail
    # A definite refusal followed by a retry whose outcome is unknown may well be present.
    result = check([*history, invoke("refused"), unknown("refused")], journal)
    assert not result.failed_but_present and result.valid


def test_control_commands_are_not_client_operations() -> None:
    history: list[Op] = [invoke("a"), ok("a", 3)]
    checkpoint = Envelope(1, 2, 1, 2, "$checkpoint", 1, b"", "")
    result = check(
        history, [marker(1), checkpoint, put(3, "a")], {"n": (3, "")}, engine_factory=kv_engine
    )
    assert not result.unexpected and not result.lost
    assert result.digest_disagreements[0].expected == digest_at([marker(1), put(3, "a")], 3)


# -- digests ---------------------------------------------------------------------------------


def test_digest_disagreement_against_the_replayed_journal() -> None:
    history, journal = clean_run()
    good_4, good_7 = digest_at(journal, 4), digest_at(journal, 7)
    nodes = {
        "primary": (7, good_7),
        "standby": (4, good_4.upper()),  # behind, but right; case does not matter
        "zombie": (7, good_4),  # wrong state at seq 7
        "future": (9, good_7),  # claims seqs the journal does not have
    }
    result = check(history, journal, nodes, engine_factory=kv_engine)
    assert not result.valid and not result.digests_agree
    flagged = {d.node: d for d in result.digest_disagreements}
    assert set(flagged) == {"zombie", "future"}
    assert flagged["zombie"].expected == good_7 and "differs" in flagged["zombie"].detail
    assert "ends at seq 7" in flagged["future"].detail
    assert "node zombie at seq 7" in result.explain()
    assert counts(result)["digest_disagreements"] == 2 and not any(
        counts(result)[name] for name in VIOLATIONS
    )


def test_digests_without_an_engine_need_one_common_seq() -> None:
    history, journal = clean_run()
    same = check(history, journal, {"a": (7, "ab"), "b": (7, "AB")})
    assert same.valid
    split = check(history, journal, {"a": (7, "ab"), "b": (7, "cd"), "c": (7, "ab")})
    assert len(split.digest_disagreements) == 3 and "2 different digests" in split.explain()
    apart = check(history, journal, {"a": (7, "ab"), "b": (6, "ab")})
    assert not apart.valid and "no common seq" in apart.digest_disagreements[0].detail


def test_a_journal_the_reference_replay_rejects_is_flagged_not_raised() -> None:
    history: list[Op] = [invoke("a"), ok("a", 1)]
    journal = [put(1, "a")]  # no epoch marker first
    result = check(history, journal, {"n": (1, "00")}, engine_factory=kv_engine)
    assert "halted at seq 1" in result.digest_disagreements[0].detail


def test_check_files_merges_several_histories(tmp_path: Path) -> None:
    with HistoryWriter(tmp_path / "w0.jsonl") as w0, HistoryWriter(tmp_path / "w1.jsonl") as w1:
        w0.invoke("a", "Put", b"")
        w1.invoke("b", "Put", b"")
        w0.ok("a", 2, b"")
        w1.unknown("b")
    journal = [marker(1), put(2, "a"), put(3, "b")]
    result = check_files([tmp_path / "w0.jsonl", tmp_path / "w1.jsonl"], journal)
    assert result.valid and result.acknowledged == 1 and len(result.recovered) == 1
    assert not check_files(tmp_path / "w0.jsonl", journal).valid  # "b" is unexpected alone


# -- the property: valid runs pass, and each injected fault moves exactly its counter --------

OUTCOMES: Final = (
    "ok",
    "fail",
    "retriable-present",
    "retriable-absent",
    "unknown-present",
    "unknown-absent",
    "pending-present",
    "pending-absent",
)


@dataclass
class Run:
    history: list[Op] = field(default_factory=list)
    journal: list[Envelope] = field(default_factory=list)
    outcome: dict[str, str] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        return self.journal[-1].epoch

    def append(self, rid: str) -> int:
        seq = len(self.journal) + 1
        self.journal.append(put(seq, rid, epoch=self.epoch, key=f"k{seq}"))
        return seq

    def add(self, rid: str, outcome: str) -> None:
        self.outcome[rid] = outcome
        self.history.append(invoke(rid))
        if outcome == "ok":
            self.history.append(ok(rid, self.append(rid)))
            return
        if outcome.endswith("present"):
            self.append(rid)
        if outcome == "fail":
            self.history.append(fail(rid))
        elif outcome.startswith("retriable"):
            self.history.append(fail(rid, "unavailable", retriable=True))
        elif outcome.startswith("unknown"):
            self.history.append(unknown(rid))


@st.composite
def valid_runs(draw: st.DrawFn) -> Run:
    outcomes = draw(st.lists(st.sampled_from(OUTCOMES), max_size=25))
    failovers = draw(st.sets(st.integers(1, max(1, len(outcomes))), max_size=3))
    run = Run(journal=[marker(1)])
    for i, outcome in enumerate(outcomes):
        if i in failovers:
            run.journal.append(marker(len(run.journal) + 1, epoch=run.epoch + 1))
        run.add(f"op{i}", outcome)
    return run


def nodes_for(data: st.DataObject, run: Run) -> dict[str, tuple[int, str]]:
    seqs = data.draw(st.lists(st.integers(0, len(run.journal)), min_size=1, max_size=3))
    return {f"node{i}": (seq, digest_at(run.journal, seq)) for i, seq in enumerate(seqs)}


def inject(data: st.DataObject, run: Run, fault: str, nodes: dict[str, tuple[int, str]]) -> None:
    """Change the run so that exactly one finding of kind ``fault`` appears."""
    with_outcome = [rid for rid, o in sorted(run.outcome.items()) if o == fault_source(fault)]
    existing = None
    use_existing: bool = data.draw(st.booleans())
    if with_outcome and use_existing:
        existing = data.draw(st.sampled_from(with_outcome))
    if fault == "lost":
        if existing:  # acknowledged at a seq that holds something else (the first marker)
            run.history.append(ok(existing, 1))
        else:
            run.history += [
                invoke("phantom"),
                ok("phantom", len(run.journal) + data.draw(st.integers(1, 3))),
            ]
    elif fault == "duplicated":
        rid = existing or "twice"
        if not existing:
            run.add(rid, "unknown-present")
        run.append(rid)
    elif fault == "unexpected":
        run.append(data.draw(st.sampled_from(["stranger", ""])))
    elif fault == "failed_but_present":
        rid = existing or "refused"
        if not existing:
            run.add(rid, "fail")
        run.append(rid)
    else:
        node = data.draw(st.sampled_from(sorted(nodes)))
        nodes[node] = (nodes[node][0], "00" * 32)  # no state hashes to this


def fault_source(fault: str) -> str:
    return {"lost": "ok", "failed_but_present": "fail"}.get(fault, "ok")


PROPERTY_SETTINGS: Final = settings(
    max_examples=300, derandomize=True, database=None, deadline=None
)


@PROPERTY_SETTINGS
@given(st.data())
def test_valid_runs_pass_and_one_injected_fault_moves_exactly_its_counter(
    data: st.DataObject,
) -> None:
    run = data.draw(valid_runs())
    nodes = nodes_for(data, run)
    result = check(run.history, run.journal, nodes, engine_factory=kv_engine)
    assert result.valid, result.explain()
    present = sum(o.endswith("present") for o in run.outcome.values())
    assert result.acknowledged == sum(o == "ok" for o in run.outcome.values())
    assert len(result.recovered) == present
    assert result.journal_commands == result.acknowledged + present

    fault = data.draw(st.sampled_from([*VIOLATIONS, "digest_disagreements"]))
    inject(data, run, fault, nodes)
    event(fault)
    broken = check(run.history, run.journal, nodes, engine_factory=kv_engine)
    expected = {name: int(name == fault) for name in (*VIOLATIONS, "digest_disagreements")}
    assert counts(broken) == expected, broken.explain()
    assert not broken.valid


# -- the self-test: a broken standby must be caught --------------------------------------


class SkippingStandby(ReplicatedState):
    """A deliberately broken standby: drops every ``every``-th user command but still advances,
    so it claims the same seq as a correct node."""

    def __init__(self, every: int) -> None:
        super().__init__(load_engine("kv"))
        self.every = every
        self.commands = 0

    def apply(self, envelope: Envelope) -> bytes | None:
        if not envelope.is_control:
            self.commands += 1
            if self.commands % self.every == 0:
                self.last_seq = envelope.seq
                return None
        return super().apply(envelope)


def test_checker_flags_a_standby_that_skips_every_1000th_command() -> None:
    journal = [marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=1)]
    history: list[Op] = []
    for seq in range(2, 5_002):
        rid = f"r{seq}"
        journal.append(Envelope(1, seq, 1, 1_000 + seq, "Put", 1, kv.put(f"k{seq}", "v"), rid))
        history += [invoke(rid), ok(rid, seq)]
    good, broken = ReplicatedState(load_engine("kv")), SkippingStandby(every=1_000)
    for env in journal:
        good.apply(env)
        broken.apply(env)
    assert broken.last_seq == good.last_seq == 5_001
    nodes = {
        "primary": (good.last_seq, good.engine.digest().hex()),
        "broken-standby": (broken.last_seq, broken.engine.digest().hex()),
    }

    result = check(history, journal, nodes, engine_factory=lambda: load_engine("kv"))
    assert not result.valid
    assert [d.node for d in result.digest_disagreements] == ["broken-standby"]
    assert result.digest_disagreements[0].seq == 5_001
    assert counts(result) == {"lost": 0, "duplicated": 0, "unexpected": 0,
                              "failed_but_present": 0, "digest_disagreements": 1}  # fmt: skip
    assert result.acknowledged == 5_000
    # Without the engine, the two nodes at the common seq still disagree with each other.
    assert not check(history, journal, nodes).digests_agree
    assert check(history, journal, {"primary": nodes["primary"]}, engine_factory=kv_engine).valid
