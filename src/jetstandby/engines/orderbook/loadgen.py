"""A deterministic load for the order book: the same seed gives the same commands, always.

The mix is about 60% places, 30% cancels and 10% replaces, from :data:`ACCOUNTS` accounts,
with prices clustered around a mid that drifts slowly per instrument. The generator predicts
the ids the engine will assign (a counter over accepted orders) and cancels or replaces
orders it believes still rest; some will have traded meanwhile, and those requests come back
as ``unknown_order`` rejections, as they would from real clients.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Final

from jetstandby.engines.orderbook.schema import (
    CANCEL_ORDER,
    INSTRUMENTS,
    PLACE_ORDER,
    REPLACE_ORDER,
    Side,
    cancel,
    place,
    place_v2,
    replace,
)

ACCOUNTS: Final = tuple(f"acct-{n:02d}" for n in range(16))
PLACE_SHARE: Final = 0.6
CANCEL_SHARE: Final = 0.3
MID_DRIFT_CHANCE: Final = 0.02
# Of the places: market orders (v1), IOC limit orders (v2); the rest are GTC limit orders.
MARKET_SHARE: Final = 0.03
IOC_SHARE: Final = 0.05
# How far from the mid an order goes, in ticks: mostly close, a few through the mid.
_MAX_DEPTH: Final = 20
_THROUGH: Final = 2
# Orders placed nearer the mid than this mostly trade soon: they are not cancelled or replaced.
_LIKELY_OPEN_DEPTH: Final = 3


class _Open:
    """What the generator believes about an order it placed."""

    __slots__ = ("account", "instrument", "order_id", "price", "quantity", "side")

    def __init__(
        self, order_id: int, account: str, instrument: str, side: Side, price: int, quantity: int
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.instrument = instrument
        self.side = side
        self.price = price
        self.quantity = quantity


class _Load:
    def __init__(self, seed: int, instruments: int) -> None:
        if not 1 <= instruments <= len(INSTRUMENTS):
            raise ValueError(f"instruments must be 1..{len(INSTRUMENTS)}, not {instruments}")
        self.rng = random.Random(seed)
        self.names = list(INSTRUMENTS)[:instruments]
        self.mids = {name: 1_000 + self.rng.randrange(1_000) for name in self.names}
        self.open: list[_Open] = []
        self.next_order_id = 1

    def next(self) -> tuple[str, int, bytes]:
        rng = self.rng
        if rng.random() < MID_DRIFT_CHANCE:
            name = rng.choice(self.names)
            self.mids[name] += rng.choice((-1, 1))
        roll = rng.random()
        if roll < PLACE_SHARE or not self.open:
            return self.place()
        if roll < PLACE_SHARE + CANCEL_SHARE:
            return self.cancel()
        return self.replace()

    def place(self) -> tuple[str, int, bytes]:
        """A limit order (GTC, v1 or v2; some IOC) or a market order near the mid."""
        rng = self.rng
        name = rng.choice(self.names)
        account = rng.choice(ACCOUNTS)
        side: Side = "buy" if rng.random() < 0.5 else "sell"
        quantity = rng.randrange(1, 11) * rng.choice((1, 1, 1, 5))
        depth = min(rng.randrange(_MAX_DEPTH), rng.randrange(_MAX_DEPTH)) - _THROUGH
        price = (self.mids[name] + (depth if side == "sell" else -depth)) * INSTRUMENTS[name]
        order_id = self.next_order_id
        self.next_order_id += 1
        style = rng.random()
        if style < MARKET_SHARE:
            return PLACE_ORDER, 1, place(account, name, side, quantity, kind="market")
        client_order_id = f"c{order_id}"
        if style < MARKET_SHARE + IOC_SHARE:
            payload = place_v2(
                account,
                name,
                side,
                quantity,
                price,
                client_order_id=client_order_id,
                time_in_force="IOC",
            )
            return PLACE_ORDER, 2, payload
        if depth >= _LIKELY_OPEN_DEPTH:
            self.open.append(_Open(order_id, account, name, side, price, quantity))
        if style < 0.5:
            return PLACE_ORDER, 1, place(account, name, side, quantity, price)
        payload = place_v2(account, name, side, quantity, price, client_order_id=client_order_id)
        return PLACE_ORDER, 2, payload

    def take_open(self) -> _Open:
        """An order likely still open, removed from the list in O(1).

        Of two random candidates, the one further from the mid on its own side: orders the
        mid has drifted through have probably traded.
        """
        rng = self.rng
        open_orders = self.open
        first = rng.randrange(len(open_orders))
        second = rng.randrange(len(open_orders))
        index = (
            first if self.depth(open_orders[first]) >= self.depth(open_orders[second]) else second
        )
        last = open_orders.pop()
        if index == len(open_orders):
            return last
        chosen, open_orders[index] = open_orders[index], last
        return chosen

    def depth(self, order: _Open) -> int:
        """How many ticks ``order`` sits behind the mid (negative: through it)."""
        ticks = order.price // INSTRUMENTS[order.instrument] - self.mids[order.instrument]
        return ticks if order.side == "sell" else -ticks

    def cancel(self) -> tuple[str, int, bytes]:
        order = self.take_open()
        return CANCEL_ORDER, 1, cancel(order.account, order.order_id)

    def replace(self) -> tuple[str, int, bytes]:
        rng = self.rng
        order = self.take_open()
        self.open.append(order)
        roll = rng.random()
        if roll < 0.5 and order.quantity > 1:
            order.quantity = rng.randrange(1, order.quantity)
            return REPLACE_ORDER, 1, replace(order.account, order.order_id, quantity=order.quantity)
        if roll < 0.75:
            order.quantity += rng.randrange(1, 6)
            return REPLACE_ORDER, 1, replace(order.account, order.order_id, quantity=order.quantity)
        step = rng.randrange(1, 3) * INSTRUMENTS[order.instrument]
        order.price += step if order.side == "sell" else -step
        return REPLACE_ORDER, 1, replace(order.account, order.order_id, price=order.price)


def generate(seed: int, count: int, instruments: int = 4) -> Iterator[tuple[str, int, bytes]]:
    """``count`` commands ``(command_type, command_version, payload)`` for the order book.

    Deterministic for ``seed``. Uses the first ``instruments`` of :data:`INSTRUMENTS`; the
    predicted order ids assume the commands are applied in order to a fresh engine.
    """
    load = _Load(seed, instruments)
    for _ in range(count):
        yield load.next()
