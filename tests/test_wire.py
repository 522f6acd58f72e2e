from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstandby import wire
from jetstandby.errors import ConfigError, WireError
from jetstandby.wire import Envelope

u64 = st.integers(min_value=0, max_value=2**64 - 1)


@given(
    seq=st.integers(min_value=1, max_value=2**64 - 1),
    epoch=u64,
    ts=u64,
    ctype=st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    version=st.integers(min_value=0, max_value=65535),
    payload=st.binary(max_size=300),
    request_id=st.text(max_size=40),
)
def test_round_trip(
    seq: int, epoch: int, ts: int, ctype: str, version: int, payload: bytes, request_id: str
) -> None:
    env = Envelope(1, seq, epoch, ts, ctype, version, payload, request_id)
    assert wire.decode(wire.encode(env)) == env


def test_encoding_is_the_documented_msgpack_array() -> None:
    env = Envelope(1, 7, 2, 123, "Put", 3, b"\x01\x02", "r-1")
    assert msgspec.msgpack.decode(wire.encode(env)) == [1, 7, 2, 123, "Put", 3, b"\x01\x02", "r-1"]
    # request_id may be omitted by writers in other languages
    short = msgspec.msgpack.encode([1, 7, 2, 123, "Put", 3, b"\x01\x02"])
    assert wire.decode(short).request_id == ""


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"\xc1garbage", "stream seq 42"),
        (msgspec.msgpack.encode([1, 0, 1, 1, "Put", 1, b""]), "'seq'"),
        (msgspec.msgpack.encode([2, 1, 1, 1, "Put", 1, b""]), "'format'"),
        (msgspec.msgpack.encode([1, 1, 1, 1, "", 1, b""]), "'command_type'"),
        (msgspec.msgpack.encode([1, 1, 1, 1, "Put", 70000, b""]), "'command_version'"),
        (msgspec.msgpack.encode([1, 1, -1, 1, "Put", 1, b""]), "'epoch'"),
        (msgspec.msgpack.encode([1, 1, 1, 1, "Put", 1, "text not bytes"]), "'payload'"),
        (msgspec.msgpack.encode([1, 1, 1]), "array"),
        (msgspec.msgpack.encode({"seq": 1}), "not a jetstandby envelope"),
        (msgspec.msgpack.encode([1, 1, 1, 1, "Put", 1, b""]).replace(b"Put", b"P\xffu"), "UTF-8"),
    ],
)
def test_malformed_envelopes_name_the_stream_seq_and_the_fault(data: bytes, needle: str) -> None:
    with pytest.raises(WireError) as info:
        wire.decode(data, stream_seq=42)
    assert info.value.stream_seq == 42
    assert "stream seq 42" in str(info.value)
    assert needle in str(info.value)


def test_msg_ids() -> None:
    assert wire.msg_id(3, 17) == "3-17"
    assert wire.parse_msg_id("3-17") == (3, 17)
    assert wire.parse_msg_id("foreign") is None
    assert wire.parse_msg_id("3-x") is None
    assert Envelope(1, 17, 3, 0, "Put", 1, b"").msg_id == "3-17"


def test_names() -> None:
    assert wire.stream_name("orders") == "JSB_ORDERS"
    assert wire.journal_subject("orders") == "jsb.orders.journal"
    assert wire.submit_subject("orders") == "jsb.orders.submit"
    for bad in ("", "Orders", "a.b", "a*", "a-b", "x" * 80):
        with pytest.raises(ConfigError, match="journal"):
            wire.stream_name(bad)


def test_command_types_reserve_the_dollar_space() -> None:
    assert wire.check_command_type("PlaceOrder") == "PlaceOrder"
    for bad in ("$epoch", "", "1abc", "a b"):
        with pytest.raises(ConfigError, match="command_type"):
            wire.check_command_type(bad)
    assert Envelope(1, 1, 1, 0, wire.EPOCH_MARKER, 1, b"").is_control
    assert not Envelope(1, 1, 1, 0, "Put", 1, b"").is_control


def test_command_builder_validates() -> None:
    assert wire.command(1, 1, 5, "Put", 1, b"p").timestamp_ns == 5
    with pytest.raises(WireError, match="'seq'"):
        wire.command(0, 1, 5, "Put", 1, b"p")


def test_the_example_in_docs_wire_md() -> None:
    env = Envelope(1, 7, 2, 1795677716335344880, "Put", 1, b"\x01\x02", "r-1")
    documented = "98 01 07 02 cf 18 eb 87 5e 7d 40 bc f0 a3 50 75 74 01 c4 02 01 02 a3 72 2d 31"
    assert wire.encode(env).hex(" ") == documented
    from pathlib import Path

    assert documented in (Path(__file__).parents[1] / "docs" / "wire.md").read_text()
