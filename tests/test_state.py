"""The replicated state machine and the engine contract: pure, no server."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstandby import wire
from jetstandby.engine import Command, Engine, load_engine
from jetstandby.engines.kv import KeyValueEngine, add, put
from jetstandby.engines.orderbook import OrderBookEngine, generate, mass_cancel
from jetstandby.errors import (
    ConfigError,
    DivergenceError,
    ProtocolError,
    UnsupportedCommand,
    VersionGateError,
)
from jetstandby.journal import MemoryFeed, MemoryLog
from jetstandby.replay import ReplayProgress, promote_channel, run_replay_loop
from jetstandby.state import Checkpoint, ReplicatedState, marker_envelope, marker_msg_id


def cmd(
    seq: int,
    epoch: int,
    ctype: str = "Put",
    payload: bytes | None = None,
    rid: str = "",
    version: int = 1,
) -> wire.Envelope:
    return wire.Envelope(
        1, seq, epoch, 1000 + seq, ctype, version, payload or put(f"k{seq}", "v"), rid
    )


def journal(*envelopes: wire.Envelope) -> ReplicatedState:
    state = ReplicatedState(KeyValueEngine(), dedup_window=3)
    for envelope in envelopes:
        state.apply(envelope)
    return state


def test_markers_set_the_epoch_and_the_fencing_id() -> None:
    state = journal(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=5), cmd(2, 1))
    assert (state.epoch, state.epoch_node, state.last_seq, state.last_msg_id) == (1, "a", 2, "1-2")
    state.apply(marker_envelope(seq=3, epoch=2, node="b", timestamp_ns=6))
    assert state.last_msg_id == marker_msg_id(2, 3, "b") == "2-3-b"
    assert wire.parse_msg_id("2-3-b") == (2, 3)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (cmd(3, 1), "stale epoch 1"),
        (cmd(3, 3), "epoch 3 has no epoch marker"),
        (marker_envelope(seq=3, epoch=2, node="c", timestamp_ns=0), "epoch marker for epoch 2"),
    ],
)
def test_protocol_violations_leave_the_state_untouched(bad: wire.Envelope, needle: str) -> None:
    state = journal(
        marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0),
        marker_envelope(seq=2, epoch=2, node="b", timestamp_ns=0),
    )
    before = state.engine.digest()
    with pytest.raises(ProtocolError, match=needle):
        state.apply(bad)
    assert state.engine.digest() == before and state.last_seq == 2


def test_a_command_before_any_marker_is_a_violation() -> None:
    with pytest.raises(ProtocolError, match="before any epoch marker"):
        journal(cmd(1, 1))


def test_unknown_types_and_versions_are_refused() -> None:
    state = journal(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0))
    with pytest.raises(UnsupportedCommand, match="'Put' version 2"):
        state.apply(cmd(2, 1, version=2))
    with pytest.raises(UnsupportedCommand, match="'Frob'"):
        state.apply(cmd(2, 1, ctype="Frob"))
    assert state.last_seq == 1


def orderbook_journal(count: int) -> tuple[ReplicatedState, list[wire.Envelope]]:
    """An order-book state after a marker and ``count`` generated commands, and those."""
    envelopes = [marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0)] + [
        wire.Envelope(1, seq, 1, seq, ctype, version, payload)
        for seq, (ctype, version, payload) in enumerate(generate(9, count), start=2)
    ]
    state = ReplicatedState(OrderBookEngine())
    for envelope in envelopes:
        state.apply(envelope)
    return state, envelopes


def test_checkpoints_carry_the_live_digest_when_the_engine_keeps_one() -> None:
    writer, _ = orderbook_journal(300)
    engine = writer.engine
    assert isinstance(engine, OrderBookEngine)
    live = writer.checkpoint(epoch=1, timestamp_ns=0)
    assert (live.command_type, live.command_version) == (wire.CHECKPOINT, 2)
    assert msgspec.msgpack.decode(live.payload)["digest"] == engine.live_digest().hex()
    kv = journal(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0), cmd(2, 1))
    assert kv.checkpoint(epoch=1, timestamp_ns=0).command_version == 1  # kv keeps none

    # A replica verifies both versions: version 1 is what older writers' journals hold.
    full = checkpoint_of(live.seq, 1, writer.digest().hex())
    for checkpoint in (live, full):
        replica, _ = orderbook_journal(300)
        replica.apply(checkpoint)
        assert replica.last_checkpoint_seq == live.seq - 1


def checkpoint_of(seq: int, version: int, digest: str) -> wire.Envelope:
    payload = Checkpoint(seq=seq - 1, digest=digest, engine_version=1)
    return wire.Envelope(1, seq, 1, 0, wire.CHECKPOINT, version, msgspec.msgpack.encode(payload))


def test_a_live_digest_checkpoint_catches_a_divergence_and_an_unknown_one_is_refused() -> None:
    writer, envelopes = orderbook_journal(300)
    checkpoint = writer.checkpoint(epoch=1, timestamp_ns=0)
    diverged = ReplicatedState(OrderBookEngine())
    last = cmd(len(envelopes), 1, "MassCancel", mass_cancel("acct-03"))
    for envelope in [*envelopes[:-1], last]:
        diverged.apply(envelope)
    assert diverged.digest() != writer.digest()  # the last command did change the book
    with pytest.raises(DivergenceError, match="state live digest"):
        diverged.apply(checkpoint)
    assert diverged.last_checkpoint_seq == 0 and diverged.last_seq == checkpoint.seq - 1

    kv = journal(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0), cmd(2, 1))
    with pytest.raises(UnsupportedCommand, match="keeps no live digest"):
        kv.apply(checkpoint_of(3, 2, "00"))
    with pytest.raises(UnsupportedCommand, match=r"'\$checkpoint' version 3"):
        kv.apply(checkpoint_of(3, 3, "00"))
    assert kv.last_seq == 2 and kv.last_checkpoint_seq == 0


def test_exactly_once_record_is_replayed_and_bounded() -> None:
    state = journal(
        marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0),
        cmd(2, 1, "Add", add("n", 5), rid="r1"),
        cmd(3, 1, "Add", add("n", 5), rid="r1"),  # journaled twice: applied once everywhere
    )
    assert state.engine.data["n"] == "5"  # type: ignore[attr-defined]
    applied = state.lookup("r1")
    assert applied is not None and applied.seq == 2
    assert msgspec.msgpack.decode(applied.result) == {"ok": True, "value": 5}
    for i in range(4, 8):
        state.apply(cmd(i, 1, "Add", add("n", 1), rid=f"r{i}"))
    assert state.lookup("r1") is None  # window of 3
    assert state.lookup("r7") is not None


async def test_a_stale_epoch_halts_a_standby_with_a_protocol_error() -> None:
    log = MemoryLog()
    for envelope in (
        marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0),
        marker_envelope(seq=2, epoch=2, node="b", timestamp_ns=0),
        cmd(3, 1),
        cmd(4, 2),
    ):
        log.publish(wire.encode(envelope))
    state, progress = ReplicatedState(KeyValueEngine()), ReplayProgress()
    _sender, signal = promote_channel()
    with pytest.raises(ProtocolError, match="stale epoch 1") as info:
        await run_replay_loop(MemoryFeed(log), state, progress, signal)
    assert (info.value.seq, info.value.stream_seq) == (3, 3)
    assert state.last_seq == 2


async def test_an_unknown_version_halts_a_standby_naming_it() -> None:
    log = MemoryLog()
    log.publish(wire.encode(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0)))
    log.publish(wire.encode(cmd(2, 1, version=7)))
    _sender, signal = promote_channel()
    with pytest.raises(VersionGateError, match=r"command seq 2 .*'Put' version 7"):
        await run_replay_loop(
            MemoryFeed(log), ReplicatedState(KeyValueEngine()), ReplayProgress(), signal
        )


ops = st.lists(
    st.tuples(
        st.sampled_from(["Put", "Delete", "Add"]), st.sampled_from("abc"), st.integers(-5, 5)
    ),
    max_size=40,
)


@settings(max_examples=50)
@given(ops)
def test_kv_is_deterministic_and_snapshots_round_trip(
    operations: list[tuple[str, str, int]],
) -> None:
    def run() -> KeyValueEngine:
        engine = KeyValueEngine()
        for seq, (kind, key, n) in enumerate(operations, 1):
            payload = {"Put": put(key, str(n)), "Add": add(key, n)}.get(
                kind, msgspec.msgpack.encode({"key": key})
            )
            engine.apply(Command(seq, seq, kind, 1, payload))
        return engine

    first, second = run(), run()
    assert first.digest() == second.digest()
    restored = KeyValueEngine()
    restored.restore(first.snapshot())
    assert restored.digest() == first.digest() and restored.data == first.data


@pytest.mark.parametrize("payload", [b"\xc1", b"\x82\xa3key\xa1\xff\xa5value\xa1v"])
def test_kv_rejects_malformed_payloads_deterministically(payload: bytes) -> None:
    engine = KeyValueEngine()
    out = msgspec.msgpack.decode(engine.apply(Command(1, 1, "Put", 1, payload)))
    assert out["ok"] is False and "bad Put payload" in out["error"]


def test_load_engine() -> None:
    assert isinstance(load_engine("kv"), Engine)
    assert load_engine("jetstandby.engines.kv:KeyValueEngine").name == "kv"
    for spec, needle in [
        ("nope", "neither a built-in"),
        ("no.such.module:X", "cannot import"),
        ("jetstandby.engines.kv:Missing", "cannot import"),
        ("jetstandby.wire:Envelope", "failed"),
        ("collections:OrderedDict", "lacks"),
    ]:
        with pytest.raises(ConfigError, match=needle) as info:
            load_engine(spec)
        assert info.value.field == "engine"


def test_the_readme_engine_works(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own engine", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 25
    module_dir = Path(str(tmp_path))
    (module_dir / "counter.py").write_text(code)
    monkeypatch.syspath_prepend(str(module_dir))
    state = ReplicatedState(load_engine("counter:Counter"))
    state.apply(marker_envelope(seq=1, epoch=1, node="a", timestamp_ns=0))
    result = state.apply(wire.Envelope(1, 2, 1, 5, "Add", 1, b'{"key": "a", "amount": 3}'))
    assert result == b'{"total": 3}'
    twin = load_engine("counter:Counter")
    twin.restore(state.engine.snapshot())
    assert twin.digest() == state.engine.digest()
