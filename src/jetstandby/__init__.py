"""jetstandby: hot-standby replication for deterministic engines over NATS JetStream.

Import from here; submodules may change.
"""

from jetstandby.config import Durability, JournalSettings, ReplaySettings
from jetstandby.errors import (
    ConfigError,
    FencedError,
    HandlerError,
    JetstandbyError,
    JournalClosed,
    JournalError,
    JournalUnavailable,
    ProtocolError,
    ReplayError,
    SequenceGapError,
    ServerError,
    StreamMismatch,
    WireError,
)
from jetstandby.journal import (
    Ack,
    CommandJournal,
    Feed,
    JetStreamFeed,
    Journal,
    JournalState,
    MemoryFeed,
    MemoryJournal,
    MemoryLog,
    Position,
    connect,
    ensure_stream,
)
from jetstandby.replay import (
    PromoteSender,
    PromoteSignal,
    ReplayHandler,
    ReplayProgress,
    SignalResult,
    is_promote_signal,
    promote_channel,
    run_replay_loop,
)
from jetstandby.wire import Envelope

__version__ = "0.1.0"

__all__ = [
    "Ack",
    "CommandJournal",
    "ConfigError",
    "Durability",
    "Envelope",
    "Feed",
    "FencedError",
    "HandlerError",
    "JetStreamFeed",
    "JetstandbyError",
    "Journal",
    "JournalClosed",
    "JournalError",
    "JournalSettings",
    "JournalState",
    "JournalUnavailable",
    "MemoryFeed",
    "MemoryJournal",
    "MemoryLog",
    "Position",
    "PromoteSender",
    "PromoteSignal",
    "ProtocolError",
    "ReplayError",
    "ReplayHandler",
    "ReplayProgress",
    "ReplaySettings",
    "SequenceGapError",
    "ServerError",
    "SignalResult",
    "StreamMismatch",
    "WireError",
    "__version__",
    "connect",
    "ensure_stream",
    "is_promote_signal",
    "promote_channel",
    "run_replay_loop",
]
