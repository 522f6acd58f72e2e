"""One instrument's book: two sides of price levels, each level a FIFO queue of orders.

A side keeps its levels in a dict keyed by price and, beside it, a sorted list of *keys*
(``price * sign``: ``+price`` for bids, ``-price`` for asks), so the best level is always
``keys[-1]``: reaching it and dropping it when it empties are O(1); adding or removing any
other level is a ``bisect`` on a short list. Nothing here depends on hash or iteration order.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque


class Order:
    """An open order resting in (or about to enter) a book. ``quantity`` is what is open."""

    __slots__ = ("account", "book", "is_buy", "order_id", "post_only", "price", "quantity")

    def __init__(
        self,
        order_id: int,
        account: str,
        book: Book,
        is_buy: bool,
        price: int,
        quantity: int,
        post_only: bool,
    ) -> None:
        self.order_id = order_id
        self.account = account
        self.book = book
        self.is_buy = is_buy
        self.price = price
        self.quantity = quantity
        self.post_only = post_only


class BookSide:
    """The bids or the asks of one book."""

    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.levels: dict[int, deque[Order]] = {}
        self.keys: list[int] = []

    def best(self) -> int | None:
        """The best price on this side, or None if it is empty."""
        return self.keys[-1] * self.sign if self.keys else None

    def add(self, order: Order) -> None:
        """Put ``order`` at the back of its price level."""
        price = order.price
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = deque()
            insort(self.keys, price * self.sign)
        level.append(order)

    def remove(self, order: Order) -> None:
        """Take ``order`` out of its level, dropping the level if it empties."""
        price = order.price
        level = self.levels[price]
        level.remove(order)
        if not level:
            del self.levels[price]
            keys = self.keys
            del keys[bisect_left(keys, price * self.sign)]

    def in_priority_order(self) -> list[Order]:
        """Every order on this side, best price first, earliest first within a price."""
        levels = self.levels
        sign = self.sign
        return [order for key in reversed(self.keys) for order in levels[key * sign]]


class Book:
    """One instrument: its tick, its bids and its asks."""

    __slots__ = ("asks", "bids", "instrument", "tick")

    def __init__(self, instrument: str, tick: int) -> None:
        self.instrument = instrument
        self.tick = tick
        self.bids = BookSide(1)
        self.asks = BookSide(-1)

    def side(self, is_buy: bool) -> BookSide:
        return self.bids if is_buy else self.asks

    def would_cross(self, is_buy: bool, price: int) -> bool:
        """Whether a limit order at ``price`` would trade against the other side now."""
        if is_buy:
            best_ask = self.asks.best()
            return best_ask is not None and price >= best_ask
        best_bid = self.bids.best()
        return best_bid is not None and price <= best_bid
