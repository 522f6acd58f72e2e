"""The matching engine: validation, price-time matching, snapshot and digests.

Validation runs in a fixed order and the first failure is the rejection, so a request that is
wrong in two ways is rejected for the same reason on every node.

Two digests: :meth:`OrderBookEngine.digest` hashes the whole snapshot (O(resting orders));
:meth:`OrderBookEngine.live_digest` is kept current as orders change, so reading it is O(1).
The live digest sums one hash per resting order: its book, side, id, account, price, open
quantity, post-only flag and the id of the order right ahead of it in its level. Those pairs
of neighbours give back each level's queue, so equal sums mean equal books but for an
accidental collision (the sum, mod 2**128, is a multiset hash). Every change to a resting
order re-hashes it, and a removal re-hashes the order that was behind it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any, Final

import msgspec

from jetstandby.engine import Command
from jetstandby.engines.orderbook.book import Book, BookSide, Order
from jetstandby.engines.orderbook.schema import (
    CANCEL_ORDER,
    INSTRUMENTS,
    MASS_CANCEL,
    PLACE_ORDER,
    REPLACE_ORDER,
    Accepted,
    Cancelled,
    CancelOrder,
    Event,
    Fill,
    Filled,
    MassCancel,
    PartiallyFilled,
    PlaceOrderV1,
    PlaceOrderV2,
    Reason,
    Rejected,
    Replaced,
    ReplaceOrder,
    Rested,
    Result,
    Side,
    TimeInForce,
)

SNAPSHOT_FORMAT: Final = 1
# Beyond any price msgpack can carry (int64/uint64): the limit of a market order.
_NO_LIMIT_KEY: Final = -(1 << 72)

_encode: Final = msgspec.msgpack.Encoder().encode
LIVE_DIGEST_FORMAT: Final = 1
_HASH_MASK: Final = (1 << 128) - 1
_QUANTITY_AHEAD: Final = struct.Struct("<qq")


class _OrderState(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    order_id: int
    account: str
    price: int
    quantity: int
    post_only: bool


class _BookState(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    instrument: str
    bids: list[_OrderState]
    asks: list[_OrderState]


class _State(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    next_order_id: int
    self_trade_prevention: bool
    books: list[_BookState]


_state_decoder: Final = msgspec.msgpack.Decoder(_State)


def _rejected(reason: Reason, order_id: int | None = None, detail: str = "") -> Result:
    return Result(False, [Rejected(reason, order_id, detail)])


def _check_price(book: Book, price: int) -> Reason | None:
    if price <= 0:
        return Reason.NON_POSITIVE_PRICE
    if price % book.tick:
        return Reason.OFF_TICK
    return None


def _check_place(
    book: Book, request: PlaceOrderV1 | PlaceOrderV2, time_in_force: TimeInForce
) -> Reason | None:
    if not request.account:
        return Reason.EMPTY_ACCOUNT
    if request.quantity <= 0:
        return Reason.NON_POSITIVE_QUANTITY
    price = request.price
    if request.kind == "market":
        if price is not None:
            return Reason.PRICE_ON_MARKET
        return None if time_in_force == "IOC" else Reason.INVALID_TIME_IN_FORCE
    if price is None:
        return Reason.MISSING_PRICE
    return _check_price(book, price)


class OrderBookEngine:
    """A limit order book for the instruments in :data:`INSTRUMENTS`, price-time priority.

    Commands, results and rejections are documented in ``docs/orderbook.md``. ``apply`` never
    raises on a bad request: it returns a ``Result`` with ``ok`` false. With
    ``self_trade_prevention`` (the default, and what :func:`load_engine` builds) an incoming
    order that reaches a resting order of its own account stops there and its remainder is
    cancelled (cancel-taker); the trades it made before that stand.
    """

    name = "orderbook"
    version = 1
    accepts = {
        PLACE_ORDER: frozenset({1, 2}),
        CANCEL_ORDER: frozenset({1}),
        REPLACE_ORDER: frozenset({1}),
        MASS_CANCEL: frozenset({1}),
    }

    def __init__(self, *, self_trade_prevention: bool = True) -> None:
        self.self_trade_prevention = self_trade_prevention
        self.next_order_id = 1
        self._books = {name: Book(name, tick) for name, tick in INSTRUMENTS.items()}
        self._orders: dict[int, Order] = {}
        self._hash_sum = 0  # the resting orders' hashes, summed mod 2**128: see live_digest
        # Every resting order by account as well, so that a mass cancel visits only the
        # account's own orders, not every order in every book (derived: not in snapshots).
        self._by_account: dict[str, dict[int, Order]] = {}
        self._routes: dict[tuple[str, int], tuple[msgspec.msgpack.Decoder[Any], _Handler]] = {
            (PLACE_ORDER, 1): (msgspec.msgpack.Decoder(PlaceOrderV1), self._place_v1),
            (PLACE_ORDER, 2): (msgspec.msgpack.Decoder(PlaceOrderV2), self._place_v2),
            (CANCEL_ORDER, 1): (msgspec.msgpack.Decoder(CancelOrder), self._cancel),
            (REPLACE_ORDER, 1): (msgspec.msgpack.Decoder(ReplaceOrder), self._replace),
            (MASS_CANCEL, 1): (msgspec.msgpack.Decoder(MassCancel), self._mass_cancel),
        }

    # --- the Engine contract -----------------------------------------------------------------

    def apply(self, command: Command) -> bytes:
        """Apply one command; the result is a msgpack :class:`Result`. Never raises."""
        route = self._routes.get((command.command_type, command.command_version))
        if route is None:
            return _encode(_rejected(Reason.UNSUPPORTED))
        decoder, handler = route
        try:
            request = decoder.decode(command.payload)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return _encode(_rejected(Reason.MALFORMED, detail=str(exc)))
        return _encode(handler(request))

    def snapshot(self) -> bytes:
        """The whole state, canonically encoded: equal states give equal bytes."""
        return _encode(
            _State(
                SNAPSHOT_FORMAT,
                self.next_order_id,
                self.self_trade_prevention,
                [
                    _BookState(name, _side_state(book.bids), _side_state(book.asks))
                    for name, book in sorted(self._books.items())
                ],
            )
        )

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a :meth:`snapshot`.

        Raises ``msgspec.DecodeError`` or ``ValueError`` (and changes nothing) if ``data`` is
        not a consistent snapshot of this engine version.
        """
        state = _state_decoder.decode(data)
        if state.format != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown order book snapshot format {state.format}")
        books = {name: Book(name, tick) for name, tick in INSTRUMENTS.items()}
        orders: dict[int, Order] = {}
        seen: set[str] = set()
        for book_state in state.books:
            book = books.get(book_state.instrument)
            if book is None or book_state.instrument in seen:
                raise ValueError(f"snapshot has unknown or repeated book {book_state.instrument!r}")
            seen.add(book_state.instrument)
            _restore_side(book, True, book_state.bids, orders, state.next_order_id)
            _restore_side(book, False, book_state.asks, orders, state.next_order_id)
            best_bid, best_ask = book.bids.best(), book.asks.best()
            if best_bid is not None and best_ask is not None and best_bid >= best_ask:
                raise ValueError(f"snapshot book {book.instrument} is crossed")
        self.next_order_id = state.next_order_id
        self.self_trade_prevention = state.self_trade_prevention
        self._books = books
        self._orders = orders
        self._by_account = {}
        self._hash_sum = 0
        for order in orders.values():
            self._index(order)
            self._hash_in(order)

    def digest(self) -> bytes:
        """sha256 of :meth:`snapshot`; independent of process and ``PYTHONHASHSEED``."""
        return hashlib.sha256(self.snapshot()).digest()

    def live_digest(self) -> bytes:
        """The state's digest kept current as it changes (see the module docstring): O(1).
        Equal states give equal live digests in any process; it is not :meth:`digest`."""
        return self._live_digest_of(self._hash_sum)

    def recount_live_digest(self) -> bytes:
        """:meth:`live_digest` computed afresh from every resting order, for tests and
        tools; the kept sum is not touched."""
        recount = sum(_order_hash(order, _identity(order)) for order in self._orders.values())
        return self._live_digest_of(recount & _HASH_MASK)

    def _live_digest_of(self, hash_sum: int) -> bytes:
        fields = (
            LIVE_DIGEST_FORMAT,
            self.next_order_id,
            self.self_trade_prevention,
            hash_sum.to_bytes(16, "little"),
        )
        return hashlib.sha256(_encode(fields)).digest()

    # --- read-only views, for tests and tools --------------------------------------------------

    def levels(self, instrument: str, side: Side) -> list[tuple[int, list[tuple[int, str, int]]]]:
        """``side`` (``buy``/``sell``) of a book, best price first: ``(price, orders)`` with
        each order ``(order_id, account, quantity)`` in time priority."""
        book_side = self._books[instrument].side(side == "buy")
        sign = book_side.sign
        return [
            (
                key * sign,
                [(o.order_id, o.account, o.quantity) for o in book_side.levels[key * sign]],
            )
            for key in reversed(book_side.keys)
        ]

    def best(self, instrument: str) -> tuple[int | None, int | None]:
        """``(best bid, best ask)`` of a book; None for an empty side."""
        book = self._books[instrument]
        return book.bids.best(), book.asks.best()

    def open_order_count(self) -> int:
        """How many orders rest in all books."""
        return len(self._orders)

    # --- commands ------------------------------------------------------------------------------

    def _place_v1(self, request: PlaceOrderV1) -> Result:
        return self._place(request, "GTC" if request.kind == "limit" else "IOC", "")

    def _place_v2(self, request: PlaceOrderV2) -> Result:
        time_in_force = request.time_in_force
        if time_in_force is None:
            time_in_force = "GTC" if request.kind == "limit" else "IOC"
        return self._place(request, time_in_force, request.client_order_id)

    def _place(
        self,
        request: PlaceOrderV1 | PlaceOrderV2,
        time_in_force: TimeInForce,
        client_order_id: str,
    ) -> Result:
        book = self._books.get(request.instrument)
        if book is None:
            return _rejected(Reason.UNKNOWN_INSTRUMENT)
        reason = _check_place(book, request, time_in_force)
        if reason is not None:
            return _rejected(reason)
        price = request.price
        is_buy = request.side == "buy"
        post_only = time_in_force == "POST_ONLY"
        if post_only and price is not None and book.would_cross(is_buy, price):
            return _rejected(Reason.POST_ONLY_WOULD_CROSS)
        order_id = self.next_order_id
        self.next_order_id = order_id + 1
        quantity = request.quantity
        order = Order(order_id, request.account, book, is_buy, price or 0, quantity, post_only)
        events: list[Event] = [Accepted(order_id, quantity, client_order_id)]
        fills: list[Fill] = []
        limit_key = _NO_LIMIT_KEY if price is None else -price if is_buy else price
        self._execute(order, limit_key, time_in_force == "IOC", events, fills)
        return Result(True, events, fills)

    def _cancel(self, request: CancelOrder) -> Result:
        order = self._orders.get(request.order_id)
        if order is None:
            return _rejected(Reason.UNKNOWN_ORDER, request.order_id)
        if order.account != request.account:
            return _rejected(Reason.WRONG_ACCOUNT, request.order_id)
        self._remove(order)
        return Result(True, [Cancelled(order.order_id, order.quantity, Reason.REQUESTED)])

    def _replace(self, request: ReplaceOrder) -> Result:
        order = self._orders.get(request.order_id)
        if order is None:
            return _rejected(Reason.UNKNOWN_ORDER, request.order_id)
        reason = _check_replace(order, request)
        if reason is not None:
            return _rejected(reason, request.order_id)
        price = order.price if request.price is None else request.price
        quantity = order.quantity if request.quantity is None else request.quantity
        if price == order.price and quantity <= order.quantity:
            order.quantity = quantity
            self._rehash(order)
            return Result(True, [Replaced(order.order_id, price, quantity, True)])
        is_buy = order.is_buy
        if order.post_only and order.book.would_cross(is_buy, price):
            return _rejected(Reason.POST_ONLY_WOULD_CROSS, order.order_id)
        self._remove(order)
        order.price = price
        order.quantity = quantity
        events: list[Event] = [Replaced(order.order_id, price, quantity, False)]
        fills: list[Fill] = []
        self._execute(order, -price if is_buy else price, False, events, fills)
        return Result(True, events, fills)

    def _mass_cancel(self, request: MassCancel) -> Result:
        instrument = request.instrument
        if instrument is not None and instrument not in self._books:
            return _rejected(Reason.UNKNOWN_INSTRUMENT)
        resting = self._by_account.get(request.account)
        if not resting:
            return Result(True, [])
        victims = sorted(
            resting.values()
            if instrument is None
            else [order for order in resting.values() if order.book.instrument == instrument],
            key=_order_id,
        )
        events: list[Event] = []
        for order in victims:
            self._remove(order)
            events.append(Cancelled(order.order_id, order.quantity, Reason.MASS_CANCEL))
        return Result(True, events)

    # --- matching ------------------------------------------------------------------------------

    def _execute(
        self,
        order: Order,
        limit_key: int,
        immediate: bool,
        events: list[Event],
        fills: list[Fill],
    ) -> None:
        """Match ``order`` against the other side, then rest or cancel what is left.

        ``limit_key`` is the worst price the order accepts, as a key of the *other* side
        (``_NO_LIMIT_KEY`` for a market order); ``immediate`` cancels the remainder (IOC).
        """
        book = order.book
        before = order.quantity
        self_trade = self._match(
            order, book.asks if order.is_buy else book.bids, limit_key, events, fills
        )
        left = order.quantity
        order_id = order.order_id
        if not left:
            events.append(Filled(order_id))
            return
        if left != before:
            events.append(PartiallyFilled(order_id, left))
        if self_trade:
            events.append(Cancelled(order_id, left, Reason.SELF_TRADE))
        elif immediate:
            events.append(Cancelled(order_id, left, Reason.IOC))
        else:
            (book.bids if order.is_buy else book.asks).add(order)
            self._orders[order_id] = order
            self._index(order)
            self._hash_in(order)
            events.append(Rested(order_id, order.price, left))

    def _match(
        self,
        taker: Order,
        opposite: BookSide,
        limit_key: int,
        events: list[Event],
        fills: list[Fill],
    ) -> bool:
        """Trade ``taker`` against ``opposite`` best level first, earliest order first.

        Leaves the open quantity in ``taker.quantity``; returns True if it stopped at one of
        its own account's orders (self-trade prevention).
        """
        keys = opposite.keys
        levels = opposite.levels
        sign = opposite.sign
        orders = self._orders
        stp = self.self_trade_prevention
        account = taker.account
        taker_id = taker.order_id
        left = taker.quantity
        while left and keys:
            key = keys[-1]
            if key < limit_key:
                break
            price = key * sign
            level = levels[price]
            while (maker := level.head) is not None:
                if stp and maker.account == account:
                    taker.quantity = left
                    return True
                maker_left = maker.quantity
                if maker_left <= left:
                    traded = maker_left
                    level.remove(maker)
                    del orders[maker.order_id]
                    self._unindex(maker)
                    self._hash_out(maker, level.head)
                    events.append(Filled(maker.order_id))
                else:
                    traded = left
                    maker.quantity = maker_left - left
                    self._rehash(maker)
                    events.append(PartiallyFilled(maker.order_id, maker_left - left))
                fills.append(Fill(maker.order_id, taker_id, maker.account, account, price, traded))
                left -= traded
                if not left:
                    break
            if level.head is None:
                del levels[price]
                keys.pop()
        taker.quantity = left
        return False

    def _remove(self, order: Order) -> None:
        behind = order.newer
        order.book.side(order.is_buy).remove(order)
        del self._orders[order.order_id]
        self._unindex(order)
        self._hash_out(order, behind)

    # --- the live digest's sum -------------------------------------------------------------

    def _hash_in(self, order: Order) -> None:
        """``order`` has come to rest (at the back of its level)."""
        order.identity = _identity(order)
        order.hashed = _order_hash(order, order.identity)
        self._hash_sum = (self._hash_sum + order.hashed) & _HASH_MASK

    def _hash_out(self, order: Order, behind: Order | None) -> None:
        """``order`` has left its level; ``behind``, the order that was right behind it,
        now has another order ahead."""
        self._hash_sum = (self._hash_sum - order.hashed) & _HASH_MASK
        order.hashed = 0
        if behind is not None:
            self._rehash(behind)

    def _rehash(self, order: Order) -> None:
        """``order`` (resting) has changed: its quantity, or the order ahead of it."""
        new = _order_hash(order, order.identity)
        self._hash_sum = (self._hash_sum - order.hashed + new) & _HASH_MASK
        order.hashed = new

    def _index(self, order: Order) -> None:
        resting = self._by_account.get(order.account)
        if resting is None:
            resting = self._by_account[order.account] = {}
        resting[order.order_id] = order

    def _unindex(self, order: Order) -> None:
        resting = self._by_account[order.account]
        del resting[order.order_id]
        if not resting:  # accounts come from clients: keep no empty entry for each one seen
            del self._by_account[order.account]


_Handler = Callable[[Any], Result]


def _order_id(order: Order) -> int:
    return order.order_id


def _identity(order: Order) -> bytes:
    """What a resting order keeps until it leaves its level, encoded: the first part of
    what its live digest share hashes."""
    return _encode(
        (
            order.book.instrument,
            order.is_buy,
            order.order_id,
            order.account,
            order.price,
            order.post_only,
        )
    )


def _order_hash(order: Order, identity: bytes) -> int:
    """A resting order's share of the live digest: 128 bits of blake2b over its
    ``identity``, then its open quantity and the id of the order right ahead of it in its
    level (0 at the front), as two little-endian int64."""
    ahead = order.older
    hashed = hashlib.blake2b(identity, digest_size=16)
    hashed.update(_QUANTITY_AHEAD.pack(order.quantity, 0 if ahead is None else ahead.order_id))
    return int.from_bytes(hashed.digest(), "little")


def _check_replace(order: Order, request: ReplaceOrder) -> Reason | None:
    if order.account != request.account:
        return Reason.WRONG_ACCOUNT
    if request.price is None and request.quantity is None:
        return Reason.NOTHING_TO_REPLACE
    if request.quantity is not None and request.quantity <= 0:
        return Reason.NON_POSITIVE_QUANTITY
    if request.price is not None:
        return _check_price(order.book, request.price)
    return None


def _side_state(side: BookSide) -> list[_OrderState]:
    return [
        _OrderState(o.order_id, o.account, o.price, o.quantity, o.post_only)
        for o in side.in_priority_order()
    ]


def _restore_side(
    book: Book, is_buy: bool, states: list[_OrderState], orders: dict[int, Order], next_id: int
) -> None:
    side = book.side(is_buy)
    previous_key: int | None = None
    for s in states:
        key = s.price * side.sign
        if s.quantity <= 0 or _check_price(book, s.price) is not None or not s.account:
            raise ValueError(f"snapshot order {s.order_id} is invalid")
        if not 0 < s.order_id < next_id or s.order_id in orders:
            raise ValueError(f"snapshot order id {s.order_id} is duplicated or out of range")
        if previous_key is not None and key > previous_key:
            raise ValueError(f"snapshot book {book.instrument} is not in priority order")
        previous_key = key
        order = Order(s.order_id, s.account, book, is_buy, s.price, s.quantity, s.post_only)
        side.add(order)
        orders[s.order_id] = order
