"""The whole jetstandby exception tree.

Every error a caller can see derives from :class:`JetstandbyError`; no bare ``nats``
exception escapes the journal layer. Subclasses are grouped by what the caller does next,
and ``retriable`` says whether trying the same thing again can succeed::

    JetstandbyError
    ├── ConfigError              bad settings or flags: fix the named field
    ├── ActionRefused            an operator action is unsafe now; ``reason`` says why (409)
    │   └── PromotionRefused     promotion is unsafe now
    ├── ServerError              the embedded nats-server would not start or stop
    ├── UnsupportedCommand       the engine does not accept this command type or version
    ├── SubmitError              a submission failed (``code`` says why; ``retriable``)
    ├── EngineFailure            the engine raised on the primary; it stops serving
    ├── WireError                a message that is not a valid envelope (names the stream seq)
    ├── SnapshotError            a snapshot is unusable (``reason``): try an older one, or replay
    ├── JournalError             the command journal
    │   ├── FencedError          another writer appended: this journal is deposed, forever
    │   ├── JournalUnavailable   JetStream did not answer within the bound (retriable)
    │   ├── JournalClosed        the journal was closed; nothing more is accepted
    │   └── StreamMismatch       the stream exists with settings we cannot run on
    └── ReplayError              the standby halted; nothing after ``seq`` was applied
        ├── SequenceGapError     the journal skips command seqs
        ├── HandlerError         the handler raised on a command
        ├── ProtocolError        a message breaks the protocol (bad envelope, stale epoch)
        │   └── VersionGateError a command type or version this node's engine cannot apply
        ├── DivergenceError      a checkpoint's digest differs from this node's: it diverged
        └── HistoryLost          the stream no longer holds the commands replay needs next
"""

from __future__ import annotations


class JetstandbyError(Exception):
    """Root of every error raised by jetstandby."""

    retriable: bool = False


class ConfigError(JetstandbyError, ValueError):
    """A setting, flag or file value is invalid; ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ActionRefused(JetstandbyError):
    """An operator action (skip, snapshot, promote) was refused; ``reason`` says what a person
    can do about it."""

    action = "action"

    def __init__(self, reason: str, *, action: str | None = None) -> None:
        if action is not None:
            self.action = action
        super().__init__(f"{self.action} refused: {reason}")
        self.reason = reason


class PromotionRefused(ActionRefused):
    """Promotion was refused; ``reason`` says what a person can do about it."""

    action = "promotion"


class ServerError(JetstandbyError):
    """The embedded nats-server failed to start, become ready or stop."""


class UnsupportedCommand(JetstandbyError, ValueError):
    """The engine does not accept ``command_type`` at ``command_version``."""

    def __init__(self, command_type: str, command_version: int, engine: str) -> None:
        super().__init__(
            f"engine {engine} does not accept command type {command_type!r} "
            f"version {command_version}"
        )
        self.command_type = command_type
        self.command_version = command_version


class SubmitError(JetstandbyError):
    """A submission was refused, or no primary acknowledged it before the deadline.

    ``code`` is the primary's reason (``bad_request``, ``unsupported``, ...) or ``deadline``.
    With ``deadline`` the outcome is unknown: submit again with the same request id.
    """

    def __init__(self, message: str, *, code: str, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable


class EngineFailure(JetstandbyError):
    """The engine raised while the primary applied a command: its state can no longer be
    trusted, so the primary stops serving (a standby halts instead, with HandlerError)."""


class WireError(JetstandbyError, ValueError):
    """Bytes that are not a valid envelope; ``stream_seq`` says where they were."""

    def __init__(self, problem: str, *, stream_seq: int | None = None) -> None:
        where = f"stream seq {stream_seq}" if stream_seq is not None else "message"
        super().__init__(f"malformed envelope at {where}: {problem}")
        self.problem = problem
        self.stream_seq = stream_seq


class SnapshotError(JetstandbyError):
    """A snapshot is unusable, or the snapshot store refused a request.

    ``reason`` names the check that failed (``checksum``, ``size``, ``engine``, ``stream``,
    ``beyond_tail``, ...: the values of :class:`jetstandby.snapshots.Refusal`); ``snapshot``
    names the object when one is involved. A refused snapshot is never restored: fall back to
    an older one, or to a full replay from command 1.
    """

    def __init__(self, message: str, *, reason: str, snapshot: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.snapshot = snapshot


class JournalError(JetstandbyError):
    """Base class for errors of the command journal."""


class FencedError(JournalError):
    """Another writer appended to the stream: this journal may never append again.

    Terminal. Every later ``append`` raises it too.
    """

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


class JournalUnavailable(JournalError):
    """JetStream did not acknowledge within the configured bound. Retry later."""

    retriable = True


class JournalClosed(JournalError):
    """The journal was closed; it accepts nothing more."""


class StreamMismatch(JournalError):
    """The stream exists but its settings are not ones a journal can safely run on."""


class ReplayError(JetstandbyError):
    """Replay halted at ``seq``: the command there was not applied, nor anything after it.

    ``seq`` is the command seq (or, if the envelope could not be read, ``None``);
    ``stream_seq`` is where in the stream it stopped.
    """

    def __init__(self, message: str, *, seq: int | None = None, stream_seq: int | None = None):
        super().__init__(message)
        self.seq = seq
        self.stream_seq = stream_seq


class SequenceGapError(ReplayError):
    """The stream skips command seqs: ``expected`` was due, ``got`` arrived."""

    def __init__(self, *, expected: int, got: int, stream_seq: int) -> None:
        super().__init__(
            f"sequence gap at stream seq {stream_seq}: expected command seq {expected}, got {got}",
            seq=got,
            stream_seq=stream_seq,
        )
        self.expected = expected
        self.got = got


class HandlerError(ReplayError):
    """The replay handler raised while applying command ``seq``; see ``__cause__``."""


class ProtocolError(ReplayError):
    """A message breaks the replication protocol (malformed envelope, stale epoch, ...)."""


class VersionGateError(ProtocolError):
    """The journal holds a command type or version this node's engine cannot apply.

    Replay halts before it; upgrade this node's engine. Only an operator's explicit skip
    passes it over (a checkpoint then shows whether the primary applied it)."""


class DivergenceError(ReplayError):
    """A checkpoint says the primary's state digest after ``checkpoint_seq`` differs from this
    node's: replay is not deterministic here. Terminal: the node must never be promoted, even
    by force; rebuild it from a snapshot or a full replay."""

    def __init__(
        self, message: str, *, seq: int, checkpoint_seq: int, expected: str, actual: str
    ) -> None:
        super().__init__(message, seq=seq)
        self.checkpoint_seq = checkpoint_seq
        self.expected = expected
        self.actual = actual


class HistoryLost(ReplayError):
    """The stream's retention limits removed commands this node has not replayed yet: the
    stream now starts at ``first_stream_seq``, replay needs ``stream_seq``. Re-bootstrap from a
    newer snapshot, or halt; never skip the gap."""

    def __init__(self, message: str, *, stream_seq: int, first_stream_seq: int) -> None:
        super().__init__(message, stream_seq=stream_seq)
        self.first_stream_seq = first_stream_seq
