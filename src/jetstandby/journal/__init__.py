"""The command journal: a fenced writer for the primary and an ordered feed for standbys.

``base`` holds the protocols, ``stream``/``writer``/``reader`` the JetStream back end, and
``memory`` the in-memory twin. Only this package imports ``nats``.
"""

from jetstandby.journal.base import Ack, Feed, Journal, JournalState, Position, chain_headers
from jetstandby.journal.memory import MemoryFeed, MemoryJournal, MemoryLog
from jetstandby.journal.reader import JetStreamFeed
from jetstandby.journal.stream import connect, ensure_stream
from jetstandby.journal.writer import CommandJournal

__all__ = [
    "Ack",
    "CommandJournal",
    "Feed",
    "JetStreamFeed",
    "Journal",
    "JournalState",
    "MemoryFeed",
    "MemoryJournal",
    "MemoryLog",
    "Position",
    "chain_headers",
    "connect",
    "ensure_stream",
]
