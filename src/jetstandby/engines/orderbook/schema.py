"""The order book's wire schema: command payloads, results, reasons, instruments.

Everything here is msgpack through msgspec. Commands are maps decoded with
``forbid_unknown_fields``; results are maps whose events are tagged by their ``event`` field.
The evolution rules are in ``docs/orderbook.md``: a field is never renamed, removed or given a
new meaning, a new field is optional with a default, and any change is a new version number.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal

import msgspec

Side = Literal["buy", "sell"]
Kind = Literal["limit", "market"]
TimeInForce = Literal["GTC", "IOC", "POST_ONLY"]

PLACE_ORDER: Final = "PlaceOrder"
CANCEL_ORDER: Final = "CancelOrder"
REPLACE_ORDER: Final = "ReplaceOrder"
MASS_CANCEL: Final = "MassCancel"

INSTRUMENTS: Final = MappingProxyType(
    {
        "BTC-USD": 10,
        "ETH-USD": 5,
        "SOL-USD": 1,
        "ADA-USD": 1,
        "EUR-USD": 5,
        "GBP-USD": 5,
        "XAU-USD": 10,
        "ES-FUT": 25,
    }
)
"""The instruments the engine trades, each with its tick: a price must be a multiple of it.

The list is part of the engine's version: changing it is a new engine version.
"""


class Reason(StrEnum):
    """Why an order was cancelled or a request rejected. Values never change meaning."""

    # cancellations
    REQUESTED = "requested"
    MASS_CANCEL = "mass_cancel"
    IOC = "ioc"
    SELF_TRADE = "self_trade"
    # rejections
    MALFORMED = "malformed"
    UNSUPPORTED = "unsupported"
    EMPTY_ACCOUNT = "empty_account"
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    NON_POSITIVE_QUANTITY = "non_positive_quantity"
    MISSING_PRICE = "missing_price"
    PRICE_ON_MARKET = "price_on_market"
    NON_POSITIVE_PRICE = "non_positive_price"
    OFF_TICK = "off_tick"
    INVALID_TIME_IN_FORCE = "invalid_time_in_force"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    UNKNOWN_ORDER = "unknown_order"
    WRONG_ACCOUNT = "wrong_account"
    NOTHING_TO_REPLACE = "nothing_to_replace"


# --- commands -------------------------------------------------------------------------------


class PlaceOrderV1(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``PlaceOrder`` v1: a limit order is good till cancelled, a market order IOC."""

    account: str
    instrument: str
    side: Side
    kind: Kind
    quantity: int
    price: int | None = None


class PlaceOrderV2(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``PlaceOrder`` v2: v1 plus ``client_order_id`` and ``time_in_force``.

    ``time_in_force`` ``None`` means the v1 default for the kind (limit GTC, market IOC).
    """

    account: str
    instrument: str
    side: Side
    kind: Kind
    quantity: int
    price: int | None = None
    client_order_id: str = ""
    time_in_force: TimeInForce | None = None


class CancelOrder(msgspec.Struct, forbid_unknown_fields=True):
    """``CancelOrder`` v1."""

    account: str
    order_id: int


class ReplaceOrder(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``ReplaceOrder`` v1: a new price and/or a new *open* (remaining) quantity."""

    account: str
    order_id: int
    price: int | None = None
    quantity: int | None = None


class MassCancel(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``MassCancel`` v1: every open order of ``account``, or only those on ``instrument``."""

    account: str
    instrument: str | None = None


# --- results --------------------------------------------------------------------------------


class Accepted(msgspec.Struct, tag_field="event", tag="accepted", omit_defaults=True):
    """A new order passed validation and got ``order_id``."""

    order_id: int
    quantity: int
    client_order_id: str = ""


class Rested(msgspec.Struct, tag_field="event", tag="rested"):
    """The order (or its remainder) now rests in the book, at the back of its level."""

    order_id: int
    price: int
    quantity: int


class PartiallyFilled(msgspec.Struct, tag_field="event", tag="partially_filled"):
    """The order traded; ``leaves`` lots are still open."""

    order_id: int
    leaves: int


class Filled(msgspec.Struct, tag_field="event", tag="filled"):
    """The order traded its whole quantity and is gone."""

    order_id: int


class Cancelled(msgspec.Struct, tag_field="event", tag="cancelled"):
    """``quantity`` open lots of the order were cancelled, and the order is gone."""

    order_id: int
    quantity: int
    reason: Reason


class Replaced(msgspec.Struct, tag_field="event", tag="replaced"):
    """The order now has ``price`` and ``quantity`` open lots."""

    order_id: int
    price: int
    quantity: int
    priority_kept: bool


class Rejected(msgspec.Struct, tag_field="event", tag="rejected", omit_defaults=True):
    """The request changed nothing. ``order_id`` is the order it named, if any."""

    reason: Reason
    order_id: int | None = None
    detail: str = ""


Event = Accepted | Rested | PartiallyFilled | Filled | Cancelled | Replaced | Rejected


class Fill(msgspec.Struct):
    """One trade, at the maker's price."""

    maker_order_id: int
    taker_order_id: int
    maker_account: str
    taker_account: str
    price: int
    quantity: int


class Result(msgspec.Struct, omit_defaults=True):
    """What one command did. ``ok`` is false exactly when ``events`` is one ``Rejected``."""

    ok: bool
    events: list[Event] = []
    fills: list[Fill] = []


_encode: Final = msgspec.msgpack.Encoder().encode
_result_decoder: Final = msgspec.msgpack.Decoder(Result)


def decode_result(data: bytes) -> Result:
    """Decode what :meth:`OrderBookEngine.apply` returned."""
    return _result_decoder.decode(data)


# --- payload helpers ------------------------------------------------------------------------


def place(
    account: str,
    instrument: str,
    side: Side,
    quantity: int,
    price: int | None = None,
    *,
    kind: Kind = "limit",
) -> bytes:
    """The payload of a ``PlaceOrder`` v1."""
    return _encode(PlaceOrderV1(account, instrument, side, kind, quantity, price))


def place_v2(
    account: str,
    instrument: str,
    side: Side,
    quantity: int,
    price: int | None = None,
    *,
    kind: Kind = "limit",
    client_order_id: str = "",
    time_in_force: TimeInForce | None = None,
) -> bytes:
    """The payload of a ``PlaceOrder`` v2."""
    return _encode(
        PlaceOrderV2(
            account, instrument, side, kind, quantity, price, client_order_id, time_in_force
        )
    )


def cancel(account: str, order_id: int) -> bytes:
    """The payload of a ``CancelOrder`` v1."""
    return _encode(CancelOrder(account, order_id))


def replace(
    account: str, order_id: int, *, price: int | None = None, quantity: int | None = None
) -> bytes:
    """The payload of a ``ReplaceOrder`` v1."""
    return _encode(ReplaceOrder(account, order_id, price, quantity))


def mass_cancel(account: str, instrument: str | None = None) -> bytes:
    """The payload of a ``MassCancel`` v1."""
    return _encode(MassCancel(account, instrument))


def encode(obj: Any) -> bytes:
    """msgpack-encode ``obj`` with the schema's encoder."""
    return _encode(obj)
