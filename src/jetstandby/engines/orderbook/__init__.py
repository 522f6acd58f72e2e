"""A deterministic limit order book: price-time priority over several instruments.

Commands (msgpack maps; the full schema, results and evolution rules are in
``docs/orderbook.md``):

- ``PlaceOrder`` v1 ``{account, instrument, side, kind, quantity, price?}`` and v2, which adds
  ``client_order_id`` and ``time_in_force`` (``GTC``/``IOC``/``POST_ONLY``);
- ``CancelOrder`` v1 ``{account, order_id}``;
- ``ReplaceOrder`` v1 ``{account, order_id, price?, quantity?}``;
- ``MassCancel`` v1 ``{account, instrument?}``.

Every result is a :class:`Result`: ``ok``, the order ``events`` in the order they happened and
the ``fills``. Bad requests are rejections, never exceptions.
"""

from __future__ import annotations

from jetstandby.engines.orderbook.engine import OrderBookEngine
from jetstandby.engines.orderbook.loadgen import ACCOUNTS, generate
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
    cancel,
    decode_result,
    mass_cancel,
    place,
    place_v2,
    replace,
)

__all__ = [
    "ACCOUNTS",
    "CANCEL_ORDER",
    "INSTRUMENTS",
    "MASS_CANCEL",
    "PLACE_ORDER",
    "REPLACE_ORDER",
    "Accepted",
    "CancelOrder",
    "Cancelled",
    "Event",
    "Fill",
    "Filled",
    "MassCancel",
    "OrderBookEngine",
    "PartiallyFilled",
    "PlaceOrderV1",
    "PlaceOrderV2",
    "Reason",
    "Rejected",
    "ReplaceOrder",
    "Replaced",
    "Rested",
    "Result",
    "Side",
    "TimeInForce",
    "cancel",
    "decode_result",
    "generate",
    "mass_cancel",
    "place",
    "place_v2",
    "replace",
]
