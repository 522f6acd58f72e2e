"""One instrument's book: two sides of price levels, each level a FIFO queue of orders.

A side keeps its levels in a dict keyed by price and, beside it, a sorted list of *keys*
(``price * sign``: ``+price`` for bids, ``-price`` for asks), so the best level is always
``keys[-1]``: reaching it and dropping it when it empties are O(1); adding or removing any
other level is a ``bisect`` on a short list. A level is a doubly linked list through its
orders, as matching engines keep them: taking any order out (a cancel, a replace, each order
of a mass cancel) is O(1), where a queue would be searched from the front. Nothing here
depends on hash or iteration order.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator


class Order:
    """An open order resting in (or about to enter) a book. ``quantity`` is what is open."""

    __slots__ = (
        "account",
        "book",
        "hashed",
        "identity",
        "is_buy",
        "newer",
        "older",
        "order_id",
        "post_only",
        "price",
        "quantity",
    )

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
        # Its neighbours in its price level while it rests: ahead of it (older) and behind.
        self.older: Order | None = None
        self.newer: Order | None = None
        # While it rests: its share of the engine's live digest (else 0), and the encoded
        # fields that share is computed from, which do not change while it rests.
        self.hashed = 0
        self.identity = b""


class Level:
    """The orders resting at one price, earliest first (time priority)."""

    __slots__ = ("head", "tail")

    def __init__(self) -> None:
        self.head: Order | None = None
        self.tail: Order | None = None

    def __bool__(self) -> bool:
        return self.head is not None

    def __iter__(self) -> Iterator[Order]:
        order = self.head
        while order is not None:
            yield order
            order = order.newer

    def append(self, order: Order) -> None:
        """Put ``order`` at the back."""
        tail = self.tail
        order.older, order.newer = tail, None
        if tail is None:
            self.head = order
        else:
            tail.newer = order
        self.tail = order

    def remove(self, order: Order) -> None:
        """Take ``order`` (which rests here) out, wherever it stands: O(1)."""
        older, newer = order.older, order.newer
        if older is None:
            self.head = newer
        else:
            older.newer = newer
        if newer is None:
            self.tail = older
        else:
            newer.older = older
        order.older = order.newer = None


class BookSide:
    """The bids or the asks of one book."""

    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.levels: dict[int, Level] = {}
        self.keys: list[int] = []

    def best(self) -> int | None:
        """The best price on this side, or None if it is empty."""
        return self.keys[-1] * self.sign if self.keys else None

    def add(self, order: Order) -> None:
        """Put ``order`` at the back of its price level."""
        price = order.price
        level = self.levels.get(price)
        if level is None:
            level = self.levels[price] = Level()
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
