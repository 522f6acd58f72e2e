"""The garbage collector and a long-lived state: keeping full collections out of replay.

CPython's full (generation 2) collection walks every tracked container in the process, and
the process stops meanwhile. In a node most of them never die: the modules, classes and
functions imported at start (about 40,000 objects, 30 ms per full collection on the
reference machine) and the engine's state built by bootstrap and catch-up. A full collection
runs whenever the survivors since the last one have grown by a quarter, so under load it
comes every few seconds, and on a standby its pause is replication lag (the end-to-end
bench saw 76 to 171 ms).

:func:`freeze_long_lived` moves every object alive now into the permanent generation
(:func:`gc.freeze`), which collections skip. The objects are still freed by reference
counting when they die; only garbage *cycles* among them stay until :func:`unfreeze`. A
node freezes once per state it adopts, when that state is built (caught up, or primary).
The cycles that die later are those already garbage-to-be then (a few, once), and the
whole state when a node replaces it: an engine is often one big cycle (an order points to
its book, a dispatch table holds bound methods), so a node unfreezes before it adopts a new
state, and the next full collection frees the old one.
"""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Collect the young generations, then freeze everything alive. A young collection, not
    a full one: a full one would be the very pause this avoids, once more. (Nor is the
    frozen count asked for: it walks the whole permanent generation.)"""
    gc.collect(1)
    gc.freeze()


def unfreeze() -> None:
    """Give everything frozen back to the oldest generation: the next full collection
    walks it all once, and frees the cycles among it that died meanwhile."""
    gc.unfreeze()
