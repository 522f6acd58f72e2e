"""The order book engine: hand-worked matching scenarios, invariants over random command
sequences, determinism (replay, snapshot/restore, hash seeds) and payload versions."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstandby.engine import Command, Engine, load_engine
from jetstandby.engines.orderbook import (
    CANCEL_ORDER,
    INSTRUMENTS,
    MASS_CANCEL,
    PLACE_ORDER,
    REPLACE_ORDER,
    Accepted,
    Cancelled,
    Fill,
    Filled,
    OrderBookEngine,
    PartiallyFilled,
    Reason,
    Rejected,
    Replaced,
    Rested,
    Result,
    Side,
    cancel,
    decode_result,
    generate,
    mass_cancel,
    place,
    place_v2,
    replace,
)
from jetstandby.engines.orderbook.book import Book as InstrumentBook
from jetstandby.engines.orderbook.book import Level, Order

SOL = "SOL-USD"  # tick 1
ETH = "ETH-USD"  # tick 5


class Harness:
    """An engine fed with consecutive seqs; results come back decoded."""

    def __init__(self, *, self_trade_prevention: bool = True) -> None:
        self.engine = OrderBookEngine(self_trade_prevention=self_trade_prevention)
        self.seq = 0

    def send(self, command_type: str, version: int, payload: bytes) -> Result:
        self.seq += 1
        command = Command(self.seq, 1_000 * self.seq, command_type, version, payload)
        return decode_result(self.engine.apply(command))

    def place(self, *args: Any, **kwargs: Any) -> Result:
        return self.send(PLACE_ORDER, 1, place(*args, **kwargs))

    def place_v2(self, *args: Any, **kwargs: Any) -> Result:
        return self.send(PLACE_ORDER, 2, place_v2(*args, **kwargs))

    def cancel(self, account: str, order_id: int) -> Result:
        return self.send(CANCEL_ORDER, 1, cancel(account, order_id))

    def replace(self, account: str, order_id: int, **kwargs: Any) -> Result:
        return self.send(REPLACE_ORDER, 1, replace(account, order_id, **kwargs))

    def mass_cancel(self, account: str, instrument: str | None = None) -> Result:
        return self.send(MASS_CANCEL, 1, mass_cancel(account, instrument))

    def book(self, instrument: str, side: Side) -> list[tuple[int, list[tuple[int, str, int]]]]:
        return self.engine.levels(instrument, side)


def rested(order_id: int, price: int, quantity: int, client_order_id: str = "") -> Result:
    return Result(
        True, [Accepted(order_id, quantity, client_order_id), Rested(order_id, price, quantity)]
    )


def rejected(reason: Reason, order_id: int | None = None) -> Result:
    return Result(False, [Rejected(reason, order_id)])


# --- golden scenarios -------------------------------------------------------------------------


def test_simple_cross() -> None:
    h = Harness()
    assert h.place("alice", SOL, "sell", 5, 100) == rested(1, 100, 5)
    assert h.place("bob", SOL, "buy", 5, 100) == Result(
        True,
        [Accepted(2, 5), Filled(1), Filled(2)],
        [Fill(1, 2, "alice", "bob", 100, 5)],
    )
    assert h.book(SOL, "buy") == h.book(SOL, "sell") == []


def test_sweep_across_levels_at_maker_prices() -> None:
    h = Harness()
    h.place("alice", SOL, "sell", 2, 101)
    h.place("carol", SOL, "sell", 3, 102)
    h.place("alice", SOL, "sell", 4, 103)
    h.place("carol", SOL, "sell", 5, 104)
    assert h.place("bob", SOL, "buy", 8, 103) == Result(
        True,
        [Accepted(5, 8), Filled(1), Filled(2), PartiallyFilled(3, 1), Filled(5)],
        [
            Fill(1, 5, "alice", "bob", 101, 2),
            Fill(2, 5, "carol", "bob", 102, 3),
            Fill(3, 5, "alice", "bob", 103, 3),
        ],
    )
    assert h.book(SOL, "sell") == [(103, [(3, "alice", 1)]), (104, [(4, "carol", 5)])]
    assert h.book(SOL, "buy") == []


def test_partial_fill_then_rest() -> None:
    h = Harness()
    h.place("alice", SOL, "sell", 3, 100)
    assert h.place("bob", SOL, "buy", 10, 101) == Result(
        True,
        [Accepted(2, 10), Filled(1), PartiallyFilled(2, 7), Rested(2, 101, 7)],
        [Fill(1, 2, "alice", "bob", 100, 3)],
    )
    assert h.book(SOL, "buy") == [(101, [(2, "bob", 7)])]
    assert h.engine.best(SOL) == (101, None)


def test_ioc_remainder_is_cancelled() -> None:
    h = Harness()
    h.place("alice", SOL, "sell", 3, 100)
    h.place("alice", SOL, "sell", 3, 102)
    assert h.place_v2(
        "bob", SOL, "buy", 5, 101, client_order_id="x1", time_in_force="IOC"
    ) == Result(
        True,
        [Accepted(3, 5, "x1"), Filled(1), PartiallyFilled(3, 2), Cancelled(3, 2, Reason.IOC)],
        [Fill(1, 3, "alice", "bob", 100, 3)],
    )
    assert h.book(SOL, "buy") == []
    assert h.book(SOL, "sell") == [(102, [(2, "alice", 3)])]


def test_market_orders_are_ioc_without_a_limit() -> None:
    h = Harness()
    assert h.place("bob", SOL, "buy", 4, kind="market") == Result(
        True, [Accepted(1, 4), Cancelled(1, 4, Reason.IOC)]
    )
    h.place("alice", SOL, "sell", 1, 100)
    h.place("alice", SOL, "sell", 1, 5_000)
    assert h.place("bob", SOL, "buy", 2, kind="market") == Result(
        True,
        [Accepted(4, 2), Filled(2), Filled(3), Filled(4)],
        [Fill(2, 4, "alice", "bob", 100, 1), Fill(3, 4, "alice", "bob", 5_000, 1)],
    )


def test_post_only_rejected_when_it_would_cross() -> None:
    h = Harness()
    h.place("alice", SOL, "buy", 5, 99)
    assert h.place_v2("bob", SOL, "sell", 5, 99, time_in_force="POST_ONLY") == rejected(
        Reason.POST_ONLY_WOULD_CROSS
    )
    assert h.place_v2("bob", SOL, "sell", 5, 98, time_in_force="POST_ONLY") == rejected(
        Reason.POST_ONLY_WOULD_CROSS
    )
    # a rejection consumes no order id
    assert h.place_v2("bob", SOL, "sell", 5, 100, time_in_force="POST_ONLY") == rested(2, 100, 5)
    assert h.engine.best(SOL) == (99, 100)


def test_replace_keeps_priority_only_for_a_decrease_at_the_same_price() -> None:
    h = Harness()
    for account in ("alice", "bob", "carol"):
        h.place(account, SOL, "buy", 5, 100)
    assert h.replace("alice", 1, quantity=3) == Result(True, [Replaced(1, 100, 3, True)])
    assert h.book(SOL, "buy") == [(100, [(1, "alice", 3), (2, "bob", 5), (3, "carol", 5)])]
    assert h.replace("bob", 2, quantity=8) == Result(
        True, [Replaced(2, 100, 8, False), Rested(2, 100, 8)]
    )
    assert h.book(SOL, "buy") == [(100, [(1, "alice", 3), (3, "carol", 5), (2, "bob", 8)])]
    assert h.replace("carol", 3, price=99) == Result(
        True, [Replaced(3, 99, 5, False), Rested(3, 99, 5)]
    )
    assert h.replace("carol", 3, price=100) == Result(
        True, [Replaced(3, 100, 5, False), Rested(3, 100, 5)]
    )
    assert h.book(SOL, "buy") == [(100, [(1, "alice", 3), (2, "bob", 8), (3, "carol", 5)])]
    assert h.place("dave", SOL, "sell", 10, 100) == Result(
        True,
        [Accepted(4, 10), Filled(1), PartiallyFilled(2, 1), Filled(4)],
        [Fill(1, 4, "alice", "dave", 100, 3), Fill(2, 4, "bob", "dave", 100, 7)],
    )


def test_replace_across_the_spread_trades_and_post_only_refuses() -> None:
    h = Harness()
    h.place("alice", SOL, "buy", 5, 100)
    h.place("bob", SOL, "sell", 3, 102)
    h.place_v2("carol", SOL, "buy", 2, 101, time_in_force="POST_ONLY")
    assert h.replace("carol", 3, price=102) == rejected(Reason.POST_ONLY_WOULD_CROSS, 3)
    assert h.book(SOL, "buy") == [(101, [(3, "carol", 2)]), (100, [(1, "alice", 5)])]
    assert h.replace("alice", 1, price=102) == Result(
        True,
        [Replaced(1, 102, 5, False), Filled(2), PartiallyFilled(1, 2), Rested(1, 102, 2)],
        [Fill(2, 1, "bob", "alice", 102, 3)],
    )
    assert h.engine.best(SOL) == (102, None)


def test_mass_cancel_by_account_and_by_instrument() -> None:
    h = Harness()
    h.place("alice", SOL, "buy", 1, 100)
    h.place("alice", ETH, "sell", 2, 200)
    h.place("bob", SOL, "buy", 3, 100)
    h.place("alice", SOL, "sell", 4, 110)
    h.place("alice", ETH, "buy", 5, 150)
    assert h.mass_cancel("alice", ETH) == Result(
        True, [Cancelled(2, 2, Reason.MASS_CANCEL), Cancelled(5, 5, Reason.MASS_CANCEL)]
    )
    assert h.book(ETH, "buy") == h.book(ETH, "sell") == []
    assert h.mass_cancel("alice") == Result(
        True, [Cancelled(1, 1, Reason.MASS_CANCEL), Cancelled(4, 4, Reason.MASS_CANCEL)]
    )
    assert h.book(SOL, "buy") == [(100, [(3, "bob", 3)])]
    assert h.book(SOL, "sell") == []
    assert h.mass_cancel("alice") == Result(True)
    assert h.mass_cancel("bob", "NOPE") == rejected(Reason.UNKNOWN_INSTRUMENT)


def test_mass_cancel_order_survives_snapshot_restore() -> None:
    h = Harness()
    h.place("alice", SOL, "buy", 1, 100)
    h.place("alice", SOL, "buy", 2, 99)
    h.replace("alice", 1, quantity=5)  # back of the queue; id order must still rule
    other = OrderBookEngine()
    other.restore(h.engine.snapshot())
    expected = h.engine.apply(Command(9, 9, MASS_CANCEL, 1, mass_cancel("alice")))
    assert other.apply(Command(9, 9, MASS_CANCEL, 1, mass_cancel("alice"))) == expected
    assert decode_result(expected).events == [
        Cancelled(1, 5, Reason.MASS_CANCEL),
        Cancelled(2, 2, Reason.MASS_CANCEL),
    ]


def test_self_trade_prevention_cancels_the_taker() -> None:
    h = Harness()
    h.place("bob", SOL, "sell", 2, 100)
    h.place("alice", SOL, "sell", 3, 100)
    h.place("carol", SOL, "sell", 4, 100)
    assert h.place("alice", SOL, "buy", 10, 100) == Result(
        True,
        [Accepted(4, 10), Filled(1), PartiallyFilled(4, 8), Cancelled(4, 8, Reason.SELF_TRADE)],
        [Fill(1, 4, "bob", "alice", 100, 2)],
    )
    assert h.book(SOL, "sell") == [(100, [(2, "alice", 3), (3, "carol", 4)])]
    assert h.book(SOL, "buy") == []
    assert h.place("carol", SOL, "buy", 3, 100) == Result(
        True,
        [Accepted(5, 3), Filled(2), Filled(5)],
        [Fill(2, 5, "alice", "carol", 100, 3)],
    )
    # stopped before any trade: the whole order is cancelled, nothing rests
    assert h.place("carol", SOL, "buy", 1, 100) == Result(
        True, [Accepted(6, 1), Cancelled(6, 1, Reason.SELF_TRADE)]
    )


def test_without_self_trade_prevention_an_account_trades_with_itself() -> None:
    h = Harness(self_trade_prevention=False)
    h.place("bob", SOL, "sell", 2, 100)
    h.place("alice", SOL, "sell", 3, 100)
    h.place("carol", SOL, "sell", 4, 100)
    assert h.place("alice", SOL, "buy", 10, 100) == Result(
        True,
        [
            Accepted(4, 10),
            Filled(1),
            Filled(2),
            Filled(3),
            PartiallyFilled(4, 1),
            Rested(4, 100, 1),
        ],
        [
            Fill(1, 4, "bob", "alice", 100, 2),
            Fill(2, 4, "alice", "alice", 100, 3),
            Fill(3, 4, "carol", "alice", 100, 4),
        ],
    )


def test_rejections_change_nothing() -> None:
    h = Harness()
    h.place("alice", ETH, "buy", 5, 100)
    before = h.engine.digest()
    cases = [
        (h.place("bob", ETH, "buy", 0, 100), rejected(Reason.NON_POSITIVE_QUANTITY)),
        (h.place("bob", ETH, "buy", -3, 100), rejected(Reason.NON_POSITIVE_QUANTITY)),
        (h.place("bob", ETH, "buy", 1, 101), rejected(Reason.OFF_TICK)),
        (h.place("bob", ETH, "buy", 1, 0), rejected(Reason.NON_POSITIVE_PRICE)),
        (h.place("bob", ETH, "buy", 1, -5), rejected(Reason.NON_POSITIVE_PRICE)),
        (h.place("bob", ETH, "buy", 1), rejected(Reason.MISSING_PRICE)),
        (h.place("bob", ETH, "buy", 1, 100, kind="market"), rejected(Reason.PRICE_ON_MARKET)),
        (h.place("bob", "DOGE-USD", "buy", 1, 100), rejected(Reason.UNKNOWN_INSTRUMENT)),
        (h.place("", ETH, "buy", 1, 100), rejected(Reason.EMPTY_ACCOUNT)),
        (
            h.place_v2("bob", ETH, "buy", 1, kind="market", time_in_force="GTC"),
            rejected(Reason.INVALID_TIME_IN_FORCE),
        ),
        (h.cancel("alice", 42), rejected(Reason.UNKNOWN_ORDER, 42)),
        (h.cancel("bob", 1), rejected(Reason.WRONG_ACCOUNT, 1)),
        (h.replace("alice", 42, quantity=1), rejected(Reason.UNKNOWN_ORDER, 42)),
        (h.replace("bob", 1, quantity=1), rejected(Reason.WRONG_ACCOUNT, 1)),
        (h.replace("alice", 1), rejected(Reason.NOTHING_TO_REPLACE, 1)),
        (h.replace("alice", 1, quantity=0), rejected(Reason.NON_POSITIVE_QUANTITY, 1)),
        (h.replace("alice", 1, price=102), rejected(Reason.OFF_TICK, 1)),
    ]
    for got, expected in cases:
        assert got == expected
    assert h.engine.digest() == before
    assert h.place("bob", ETH, "sell", 1, 105) == rested(2, 105, 1)


@pytest.mark.parametrize(
    ("command_type", "payload"),
    [
        (PLACE_ORDER, b"\xc1"),
        (PLACE_ORDER, msgspec.msgpack.encode({"account": "a"})),
        (PLACE_ORDER, msgspec.msgpack.encode([1, 2, 3])),
        (
            PLACE_ORDER,
            msgspec.msgpack.encode(
                {"account": "a", "instrument": SOL, "side": "up", "kind": "limit", "quantity": 1}
            ),
        ),
        (
            PLACE_ORDER,
            msgspec.msgpack.encode(
                {
                    "account": "a",
                    "instrument": SOL,
                    "side": "buy",
                    "kind": "limit",
                    "quantity": 1,
                    "price": 1,
                    "time_in_force": "IOC",  # a v2 field in a v1 payload
                }
            ),
        ),
        (CANCEL_ORDER, msgspec.msgpack.encode({"account": "a", "order_id": "1"})),
        (REPLACE_ORDER, msgspec.msgpack.encode({"account": "a", "order_id": 1, "qty": 2})),
        (MASS_CANCEL, b""),
        # invalid UTF-8 in a value and in a key: msgspec raises UnicodeDecodeError, not a
        # DecodeError; it must still be a rejection, never an exception out of apply()
        (PLACE_ORDER, b"\x81\xa7account\xa1\xff"),
        (CANCEL_ORDER, b"\x81\xa1\xff\x01"),
        (REPLACE_ORDER, b"\x81\xa1\xff\x01"),
        (MASS_CANCEL, b"\x81\xa7account\xa1\xff"),
    ],
)
def test_malformed_payloads_are_rejections(command_type: str, payload: bytes) -> None:
    engine = OrderBookEngine()
    result = decode_result(engine.apply(Command(1, 0, command_type, 1, payload)))
    assert not result.ok
    [event] = result.events
    assert isinstance(event, Rejected)
    assert event.reason is Reason.MALFORMED
    assert event.detail


# --- versions -----------------------------------------------------------------------------------


def test_place_v1_and_v2_both_work_and_v2_defaults_to_v1_behaviour() -> None:
    assert OrderBookEngine.accepts[PLACE_ORDER] == frozenset({1, 2})
    v1, v2 = Harness(), Harness()
    v1.place("alice", SOL, "buy", 5, 100)
    v2.place_v2("alice", SOL, "buy", 5, 100)  # no time_in_force: GTC for a limit
    v1.place("bob", SOL, "sell", 7, kind="market")
    v2.place_v2("bob", SOL, "sell", 7, kind="market")  # IOC for a market
    assert v1.engine.digest() == v2.engine.digest()
    h = Harness()
    assert h.place_v2("a", SOL, "buy", 1, 1, client_order_id="mine") == rested(1, 1, 1, "mine")


def test_unknown_versions_and_types_are_not_accepted() -> None:
    engine = OrderBookEngine()
    assert 3 not in engine.accepts[PLACE_ORDER]
    assert engine.accepts[CANCEL_ORDER] == frozenset({1})
    assert engine.accepts[REPLACE_ORDER] == frozenset({1})
    assert engine.accepts[MASS_CANCEL] == frozenset({1})
    for command_type, version in ((PLACE_ORDER, 3), (CANCEL_ORDER, 2), ("Teleport", 1)):
        command = Command(1, 0, command_type, version, place("a", SOL, "buy", 1, 1))
        assert decode_result(engine.apply(command)) == rejected(Reason.UNSUPPORTED)


def test_load_engine_builds_it_by_name() -> None:
    engine = load_engine("orderbook")
    assert isinstance(engine, OrderBookEngine)
    assert isinstance(engine, Engine)
    assert (engine.name, engine.version) == ("orderbook", 1)


# --- invariants over random command sequences ----------------------------------------------------

ACCOUNTS = ("a", "b", "c")
TICKS = {SOL: 1, ETH: 5}

_quantity = st.sampled_from((-1, 0, *range(1, 9), *range(1, 9), *range(1, 9)))
_price = st.tuples(st.integers(97, 103), st.sampled_from((0,) * 9 + (1,)))  # (ticks, off tick)
_place_op = st.tuples(
    st.just("place"),
    st.sampled_from((1, 2)),
    st.sampled_from(ACCOUNTS),
    st.sampled_from((SOL, ETH)),
    st.sampled_from(("buy", "sell")),
    st.sampled_from(("limit",) * 6 + ("market",)),
    _quantity,
    _price,
    st.sampled_from((None, "GTC", "IOC", "POST_ONLY")),
)
_cancel_op = st.tuples(st.just("cancel"), st.integers(0, 30), st.booleans())
_replace_op = st.tuples(
    st.just("replace"),
    st.integers(0, 30),
    st.booleans(),
    st.none() | _price,
    st.none() | _quantity,
)
_mass_op = st.tuples(st.just("mass"), st.sampled_from(ACCOUNTS), st.sampled_from((None, SOL, ETH)))
_op_strategies: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "place": _place_op,
    "cancel": _cancel_op,
    "replace": _replace_op,
    "mass": _mass_op,
}
_op = st.sampled_from(("place",) * 6 + ("cancel",) * 3 + ("replace",) * 2 + ("mass",)).flatmap(
    lambda kind: _op_strategies[kind]
)
_ops = st.lists(_op, min_size=10, max_size=70)

Book = dict[tuple[str, str], list[tuple[int, str, int, int]]]


def open_book(engine: OrderBookEngine) -> Book:
    """(instrument, side) -> [(order_id, account, quantity, price)] in priority order."""
    return {
        (instrument, side): [
            (order_id, account, quantity, price)
            for price, orders in engine.levels(instrument, side)
            for order_id, account, quantity in orders
        ]
        for instrument in INSTRUMENTS
        for side in ("buy", "sell")
    }


@dataclass
class Tracked:
    """One order as its events tell it; quantity in = open + filled + cancelled."""

    account: str
    instrument: str
    side: str
    quantity_in: int
    leaves: int
    filled: int = 0
    cancelled: int = 0


@dataclass
class Checker:
    """Applies commands and checks each result against the book before and after it."""

    stp: bool
    engine: OrderBookEngine = field(init=False)
    orders: dict[int, Tracked] = field(default_factory=dict)
    commands: list[Command] = field(default_factory=list)
    results: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = OrderBookEngine(self_trade_prevention=self.stp)

    def pick(self, index: int, own: bool) -> tuple[int, str]:
        """An open order (any order when none is open), by ``index``; its account if ``own``."""
        ids = sorted(i for i, o in self.orders.items() if o.leaves) or sorted(self.orders)
        if not ids:
            return index, "c"
        order_id = ids[index % len(ids)]
        return order_id, self.orders[order_id].account if own else "c"

    def payload(self, op: tuple[Any, ...]) -> tuple[str, int, bytes]:
        kind = op[0]
        if kind == "place":
            _, version, account, instrument, side, order_kind, quantity, (ticks, off), tif = op
            price = None if order_kind == "market" else ticks * TICKS[instrument] + off
            if version == 1:
                return (
                    PLACE_ORDER,
                    1,
                    place(account, instrument, side, quantity, price, kind=order_kind),
                )
            payload = place_v2(
                account, instrument, side, quantity, price, kind=order_kind, time_in_force=tif
            )
            return PLACE_ORDER, 2, payload
        if kind == "cancel":
            order_id, account = self.pick(op[1], op[2])
            return CANCEL_ORDER, 1, cancel(account, order_id)
        if kind == "replace":
            order_id, account = self.pick(op[1], op[2])
            tracked = self.orders.get(order_id)
            new_price = None
            if op[3] is not None:
                tick = TICKS[tracked.instrument] if tracked else 1
                new_price = op[3][0] * tick + op[3][1]
            return REPLACE_ORDER, 1, replace(account, order_id, price=new_price, quantity=op[4])
        return MASS_CANCEL, 1, mass_cancel(op[1], op[2])

    def incoming(self, command: Command) -> tuple[str, str] | None:
        """The (instrument, side) of the order a command may trade, if it names one."""
        request = msgspec.msgpack.decode(command.payload)
        if not isinstance(request, dict):
            return None
        if command.command_type == PLACE_ORDER:
            return str(request.get("instrument")), str(request.get("side"))
        tracked = self.orders.get(request.get("order_id", 0))
        if command.command_type == REPLACE_ORDER and tracked is not None:
            return tracked.instrument, tracked.side
        return None

    def step(self, command_type: str, version: int, payload: bytes) -> None:
        seq = len(self.commands) + 1
        command = Command(seq, seq, command_type, version, payload)
        incoming = self.incoming(command)
        before = open_book(self.engine)
        raw = self.engine.apply(command)
        self.commands.append(command)
        self.results.append(raw)
        result = decode_result(raw)
        after = open_book(self.engine)
        self.check_book(after)
        self.check_account_index(after)
        # The kept sum is the one a recount gives, after every command (rejections too).
        assert self.engine.live_digest() == self.engine.recount_live_digest()
        if not result.ok:
            assert after == before
            return
        request = msgspec.msgpack.decode(payload)
        self.track(request["account"], result, incoming)
        self.check_priority(request, result, before, incoming)
        self.check_tracked(after)
        if command_type == REPLACE_ORDER:
            self.check_replace(request, result, before, after)
        if command_type == CANCEL_ORDER:
            [event] = result.events
            assert isinstance(event, Cancelled)
            assert after == {
                key: [o for o in orders if o[0] != event.order_id] for key, orders in before.items()
            }
        if command_type == MASS_CANCEL:
            cancelled = {e.order_id for e in result.events if isinstance(e, Cancelled)}
            for (instrument, _), orders in after.items():
                if request.get("instrument") in (None, instrument):
                    assert all(o[1] != request["account"] for o in orders)
            assert after == {
                key: [o for o in orders if o[0] not in cancelled] for key, orders in before.items()
            }

    def check_account_index(self, book: Book) -> None:
        """The engine's by-account index (what a mass cancel visits) holds exactly the
        resting orders, each under its own account, and no account without one."""
        resting: dict[str, set[int]] = {}
        for orders in book.values():
            for order_id, account, *_ in orders:
                resting.setdefault(account, set()).add(order_id)
        index = self.engine._by_account
        assert {account: set(orders) for account, orders in index.items()} == resting

    def check_book(self, book: Book) -> None:
        for instrument, tick in INSTRUMENTS.items():
            bids, asks = book[instrument, "buy"], book[instrument, "sell"]
            for orders in (bids, asks):
                assert all(quantity > 0 for _, _, quantity, _ in orders)
                assert all(price % tick == 0 for *_, price in orders)
            if bids and asks:
                assert bids[0][3] < asks[0][3], "crossed book"
            assert [o[3] for o in bids] == sorted((o[3] for o in bids), reverse=True)
            assert [o[3] for o in asks] == sorted(o[3] for o in asks)

    def track(self, account: str, result: Result, incoming: tuple[str, str] | None) -> None:
        rest = result.events
        if rest and isinstance(rest[0], Accepted):
            assert incoming is not None
            accepted = rest[0]
            self.orders[accepted.order_id] = Tracked(
                account, *incoming, accepted.quantity, accepted.quantity
            )
            rest = rest[1:]
        elif rest and isinstance(rest[0], Replaced):
            replaced = rest[0]
            tracked = self.orders[replaced.order_id]
            delta = replaced.quantity - tracked.leaves
            if delta > 0:
                tracked.quantity_in += delta
            else:
                tracked.cancelled -= delta
            tracked.leaves = replaced.quantity
            rest = rest[1:]
        for fill in result.fills:
            assert fill.quantity > 0
            for order_id in (fill.maker_order_id, fill.taker_order_id):
                self.orders[order_id].leaves -= fill.quantity
                self.orders[order_id].filled += fill.quantity
            if self.stp:
                assert fill.maker_account != fill.taker_account
        for event in rest:
            assert not isinstance(event, Accepted | Replaced | Rejected)
            tracked = self.orders[event.order_id]
            if isinstance(event, Filled):
                assert tracked.leaves == 0
            elif isinstance(event, PartiallyFilled):
                assert tracked.leaves == event.leaves > 0
            elif isinstance(event, Rested):
                assert tracked.leaves == event.quantity > 0
            elif isinstance(event, Cancelled):
                assert tracked.leaves == event.quantity > 0
                tracked.cancelled += event.quantity
                tracked.leaves = 0

    def check_priority(
        self, request: Any, result: Result, before: Book, incoming: tuple[str, str] | None
    ) -> None:
        """Makers are taken best price first, earliest first: a prefix of the other side;
        and never beyond the taker's limit."""
        if not result.fills:
            return
        assert incoming is not None
        instrument, side = incoming
        first = result.events[0]
        limit = first.price if isinstance(first, Replaced) else request.get("price")
        if limit is not None:
            assert all(
                f.price <= limit if side == "buy" else f.price >= limit for f in result.fills
            )
        opposite = before[instrument, "sell" if side == "buy" else "buy"]
        makers = [fill.maker_order_id for fill in result.fills]
        assert makers == [o[0] for o in opposite[: len(makers)]]
        for fill, (_, account, quantity, price) in zip(result.fills, opposite, strict=False):
            assert (fill.price, fill.maker_account) == (price, account)
            assert fill.quantity <= quantity
        assert all(f.quantity == o[2] for f, o in zip(result.fills[:-1], opposite, strict=False))
        assert len({fill.taker_order_id for fill in result.fills}) == 1

    def check_replace(self, request: Any, result: Result, before: Book, after: Book) -> None:
        """Priority is kept exactly for a decrease (or no change) at the same price."""
        replaced = result.events[0]
        assert isinstance(replaced, Replaced)
        [(key, old)] = [
            (k, o) for k, orders in before.items() for o in orders if o[0] == replaced.order_id
        ]
        kept = replaced.price == old[3] and replaced.quantity <= old[2]
        assert replaced.priority_kept == kept
        if kept:
            assert after == {
                k: [(*o[:2], replaced.quantity, o[3]) if o == old else o for o in orders]
                for k, orders in before.items()
            }
        elif isinstance(result.events[-1], Rested):
            level = [o for o in after[key] if o[3] == replaced.price]
            assert level[-1][0] == replaced.order_id

    def check_tracked(self, book: Book) -> None:
        resting = {o[0]: o[2] for orders in book.values() for o in orders}
        assert resting.keys() <= self.orders.keys()
        for order_id, tracked in self.orders.items():
            assert tracked.quantity_in == tracked.leaves + tracked.filled + tracked.cancelled
            assert tracked.leaves >= 0
            assert resting.get(order_id, 0) == tracked.leaves

    def check_replay(self, split: int) -> None:
        """The same commands give the same results and state, with a snapshot at ``split``."""
        split = min(split, len(self.commands))
        first = OrderBookEngine(self_trade_prevention=self.stp)
        for command in self.commands[:split]:
            first.apply(command)
        second = OrderBookEngine(self_trade_prevention=not self.stp)
        second.restore(first.snapshot())
        assert second.digest() == first.digest()
        assert second.live_digest() == first.live_digest()
        assert [second.apply(c) for c in self.commands[split:]] == self.results[split:]
        assert second.digest() == self.engine.digest()
        assert second.live_digest() == self.engine.live_digest()
        assert second.snapshot() == self.engine.snapshot()
        assert second._by_account.keys() == self.engine._by_account.keys()  # rebuilt on restore


@settings(max_examples=150, deadline=None)
@given(ops=_ops, stp=st.booleans(), split=st.integers(0, 70))
def test_invariants_hold_for_any_command_sequence(
    ops: list[tuple[Any, ...]], stp: bool, split: int
) -> None:
    checker = Checker(stp)
    for op in ops:
        checker.step(*checker.payload(op))
    checker.check_replay(split)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), stp=st.booleans(), split=st.integers(0, 400))
def test_invariants_hold_for_the_load_generator(seed: int, stp: bool, split: int) -> None:
    checker = Checker(stp)
    for command_type, version, payload in generate(seed, 400, instruments=2):
        checker.step(command_type, version, payload)
    assert any(decode_result(r).fills for r in checker.results)
    checker.check_replay(split)


# --- determinism -----------------------------------------------------------------------------


def commands(seed: int, count: int) -> list[Command]:
    return [
        Command(seq, 1_000 * seq, command_type, version, payload)
        for seq, (command_type, version, payload) in enumerate(generate(seed, count), start=1)
    ]


def test_generate_is_deterministic_with_the_promised_mix() -> None:
    first, again, other = (list(generate(seed, 5_000)) for seed in (3, 3, 4))
    assert first == again
    assert first != other
    kinds = [command_type for command_type, _, _ in first]
    assert 0.55 < kinds.count(PLACE_ORDER) / len(kinds) < 0.65
    assert 0.25 < kinds.count(CANCEL_ORDER) / len(kinds) < 0.35
    assert 0.07 < kinds.count(REPLACE_ORDER) / len(kinds) < 0.13
    with pytest.raises(ValueError, match="instruments"):
        next(generate(1, 1, instruments=99))


def test_replay_snapshot_and_restore_give_the_same_digest() -> None:
    load = commands(11, 6_000)
    one, two = OrderBookEngine(), OrderBookEngine()
    results = [one.apply(c) for c in load]
    assert [two.apply(c) for c in load] == results
    assert one.digest() == two.digest()
    assert one.open_order_count() > 0
    resumed = OrderBookEngine()
    for c in load[:2_500]:
        resumed.apply(c)
    restored = OrderBookEngine()
    restored.restore(resumed.snapshot())
    assert restored.digest() == resumed.digest()
    assert [restored.apply(c) for c in load[2_500:]] == results[2_500:]
    assert restored.digest() == one.digest()
    # the load really trades: fills, rests, cancels and misses all happen
    decoded = [decode_result(r) for r in results]
    assert sum(len(r.fills) for r in decoded) > 500
    assert sum(not r.ok for r in decoded) > 0


def test_restore_refuses_an_inconsistent_snapshot_and_keeps_its_state() -> None:
    h = Harness()
    h.place("alice", SOL, "buy", 5, 100)
    digest = h.engine.digest()
    state = msgspec.msgpack.decode(h.engine.snapshot())
    bad_states = []
    mutations: list[Callable[[dict[str, Any]], None]] = [
        lambda s: s.update(format=2),
        lambda s: s["books"].append(["NOPE-USD", [], []]),
        lambda s: s["books"].append(s["books"][0]),
        lambda s: s.update(next_order_id=1),  # the open order's id is not below it
    ]
    for mutate in mutations:
        bad = msgspec.msgpack.decode(h.engine.snapshot())
        mutate(bad)
        bad_states.append(bad)
    crossed = msgspec.msgpack.decode(h.engine.snapshot())
    sol = next(b for b in crossed["books"] if b[0] == SOL)
    sol[2].append([7, "bob", 99, 1, False])
    crossed["next_order_id"] = 8
    bad_states.append(crossed)
    for bad in bad_states:
        with pytest.raises(ValueError):
            h.engine.restore(msgspec.msgpack.encode(bad))
        assert h.engine.digest() == digest
    with pytest.raises(msgspec.DecodeError):
        h.engine.restore(b"not a snapshot")
    assert msgspec.msgpack.decode(h.engine.snapshot()) == state


_DIGEST_SCRIPT = """
from jetstandby.engine import Command
from jetstandby.engines.orderbook import OrderBookEngine, generate
engine = OrderBookEngine()
for seq, (t, v, p) in enumerate(generate(5, 3000), start=1):
    engine.apply(Command(seq, seq, t, v, p))
print(engine.digest().hex(), engine.live_digest().hex())
"""


def test_digest_is_the_same_under_any_hash_seed() -> None:
    digests = set()
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        digests.add(out.stdout.strip())
    engine = OrderBookEngine()
    for seq, (t, v, p) in enumerate(generate(5, 3000), start=1):
        engine.apply(Command(seq, seq, t, v, p))
    assert digests == {f"{engine.digest().hex()} {engine.live_digest().hex()}"}


def test_the_live_digest_tells_apart_what_the_snapshot_tells_apart() -> None:
    """Books that differ only in the queue order at one price, or in one quantity, have
    different snapshots: their live digests must differ too."""

    def book(*places: tuple[str, int]) -> OrderBookEngine:
        engine = OrderBookEngine()
        for seq, (account, quantity) in enumerate(places, start=1):
            engine.apply(
                Command(seq, seq, PLACE_ORDER, 1, place(account, "BTC-USD", "buy", quantity, 100))
            )
        return engine

    base = book(("a", 5), ("b", 7))
    twin = book(("a", 5), ("b", 7))
    swapped = book(("b", 7), ("a", 5))  # arrived the other way round: ids 1 and 2 swap
    smaller = book(("a", 5), ("b", 7))
    smaller.apply(Command(3, 3, REPLACE_ORDER, 1, replace("b", 2, quantity=6)))  # keeps its place
    # Order 1 goes up (to the back of the queue) and down again: base's orders, but b first.
    requeued = book(("a", 5), ("b", 7))
    requeued.apply(Command(3, 3, REPLACE_ORDER, 1, replace("a", 1, quantity=6)))
    requeued.apply(Command(4, 4, REPLACE_ORDER, 1, replace("a", 1, quantity=5)))
    assert base.live_digest() == twin.live_digest()
    engines = [base, swapped, smaller, requeued]
    assert len({e.snapshot() for e in engines}) == len(engines)
    assert len({e.live_digest() for e in engines}) == len(engines)
    for engine in engines:
        assert engine.live_digest() == engine.recount_live_digest()


def test_a_level_takes_out_any_order_and_keeps_time_priority() -> None:
    book = InstrumentBook(SOL, INSTRUMENTS[SOL])
    orders = [Order(i, "alice", book, True, 100, 1, False) for i in range(1, 6)]
    level = Level()
    for order in orders:
        level.append(order)
    for gone in (orders[0], orders[2], orders[4]):  # the head, the middle, the tail
        level.remove(gone)
        assert gone.older is None and gone.newer is None
    assert [o.order_id for o in level] == [2, 4]
    assert (level.head, level.tail) == (orders[1], orders[3])
    level.append(orders[0])  # a replaced order goes to the back
    assert [o.order_id for o in level] == [2, 4, 1]
    for order in list(level):
        level.remove(order)
    assert not level and level.tail is None
