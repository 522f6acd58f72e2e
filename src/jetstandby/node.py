"""One node: a standby that replays, and on an explicit promote becomes the primary.

Roles go ``standby → promoting → primary``, and a primary whose journal is fenced by a newer
epoch becomes ``fenced`` (terminal). Promotion: stop replay at the promote signal, drain to the
stream's tail, append an epoch marker fenced on the last message applied (on refusal, replay
what another writer appended and try again, up to ``promote_attempts``), then serve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

from jetstandby import heap, wire
from jetstandby.aio import cancel_and_wait
from jetstandby.bootstrap import RetentionWatch, Snapshotter, Start, find_start, stream_bounds
from jetstandby.config import NodeSettings
from jetstandby.engine import Engine
from jetstandby.errors import (
    ActionRefused,
    ConfigError,
    DivergenceError,
    FencedError,
    HistoryLost,
    JetstandbyError,
    JournalUnavailable,
    PromotionRefused,
    ReplayError,
    SnapshotError,
    WireError,
)
from jetstandby.journal import CommandJournal, JetStreamFeed, Position
from jetstandby.journal.marker import append_fenced
from jetstandby.journal.stream import NatsClient, message_at
from jetstandby.primary import PrimaryService
from jetstandby.replay import ReplayProgress, promote_channel, run_replay_loop
from jetstandby.snapshots import Refusal, SnapshotMeta, SnapshotStore
from jetstandby.state import ReplicatedState, marker_envelope, marker_msg_id
from jetstandby.status import NodeStatus, PromoteResult, Role, SkipResult, Transition

logger = logging.getLogger(__name__)

TICK: Final = 0.25
HOUSEKEEPING_INTERVAL: Final = 1.0
RATE_SMOOTHING: Final = 0.3


class Node:
    """A jetstandby node. Drive it with :meth:`run`; the admin API calls :meth:`promote`."""

    def __init__(
        self,
        nc: NatsClient,
        engine: Engine,
        settings: NodeSettings,
        *,
        engine_factory: Callable[[], Engine] | None = None,
    ) -> None:
        """``engine_factory`` makes fresh engines to restore snapshots into (default:
        ``type(engine)``); ``engine`` is the one a full replay starts from."""
        self.settings = settings
        self.state = ReplicatedState(engine)
        self._engine_factory = engine_factory or type(engine)
        self.progress = ReplayProgress()
        self.role = Role.STANDBY
        self._nc = nc
        self._feed = JetStreamFeed(nc, settings.journal, settings.replay)
        self._sender, self._signal = promote_channel()
        self._promotion: asyncio.Future[PromoteResult] | None = None
        self._promotion_started = 0.0
        self._promotion_forced = False
        #: The stream's tail as this node knew it when promotion was asked: an epoch marker
        #: after it means another node won this promotion.
        self._promotion_floor: int | None = None
        self._as_primary = False  # run(as_primary=True): the promotion began at start
        self._primary: PrimaryService | None = None
        self._finished = asyncio.Event()
        self._promote_lock = asyncio.Lock()
        #: True once a newer epoch's writer deposed this primary (not for other failures).
        self.deposed = False
        self._started = asyncio.Event()
        self._transitions: list[Transition] = []
        self._lag_ms = 0.0
        self._apply_rate = 0.0
        self._last_error: str | None = None
        self._resume = asyncio.Event()
        self._skipped: list[SkipResult] = []
        self._snapshotter: Snapshotter | None = None
        self._start: Start | None = None
        self._retention = RetentionWatch(settings.snapshots.retention_warn_fraction)
        self._heap_due = False  # freeze the adopted state once it is built (see _tick)
        self._heap_frozen = False

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, as_primary: bool = False) -> Role:
        """Replay, promote when told, serve until fenced. Returns the final role.

        ``as_primary``: promote at once (after replaying the whole journal). A standby whose
        replay halts stays up, halted, until cancelled. Cancel to stop the node.
        """
        await JetStreamFeed.open(self._nc, self.settings.journal, self.settings.replay)
        snapshots = self.settings.snapshots
        if snapshots.enabled:
            store = await SnapshotStore.open(
                self._nc,
                self.settings.journal,
                replicas=self.settings.journal.replicas,
                keep=snapshots.keep,
            )
            self._snapshotter = Snapshotter(
                store, snapshots, self.settings.journal, self.settings.node_id
            )
        self._transition(Role.STANDBY, "started")
        if as_primary:
            self._as_primary = True
            self._begin_promotion(forced=False, reason="started as primary")
        self._started.set()
        loop = asyncio.get_running_loop()
        helpers = [loop.create_task(self._tick()), loop.create_task(self._housekeeping())]
        try:
            await self._bootstrap()
            await self._replay_until_promoted()
            await self._finished.wait()
        finally:
            try:
                await cancel_and_wait(*helpers)
            finally:  # even if stopped again meanwhile
                if self._primary is not None:
                    await self._primary.aclose()
                if self._snapshotter is not None:
                    await self._snapshotter.store.aclose()
        return self.role

    async def wait_started(self) -> None:
        """Return once :meth:`run` has opened the journal stream (promotion can be asked)."""
        await self._started.wait()

    async def _replay_until_promoted(self) -> None:
        """Replay until a promotion succeeds. A halted replay waits, up, for an operator."""
        while True:
            try:
                await run_replay_loop(
                    self._feed,
                    self.state,
                    self.progress,
                    self._signal,
                    start_after=self._position(),
                    settings=self.settings.replay,
                    max_body=self._max_body(),
                )
            except HistoryLost as exc:
                # As text: a log record holding the exception would pin, through its
                # traceback, the replay run and the state this node is about to replace.
                logger.error("replay fell off the start of the stream: %s", str(exc))
                self._forget_promotion(PromotionRefused(f"replay lost history: {exc}"))
                if not await self._bootstrap():  # the stream starts before the hole
                    await self._wait_out_halt(self._hole(exc))
                continue
            except ReplayError as exc:
                await self._wait_out_halt(exc)
                continue
            self._transition(Role.PROMOTING, "promote signal")
            try:
                result = await self._take_over()
            except JetstandbyError as exc:
                logger.error("promotion failed, back to standby: %s", exc)
                self._last_error = f"promotion failed: {exc}"
                self._sender, self._signal = promote_channel()
                self._transition(Role.STANDBY, f"promotion failed: {exc}")
                self._fail_promotion(PromotionRefused(str(exc)))
                continue
            self._transition(Role.PRIMARY, f"epoch {result.epoch} from seq {result.seq}")
            assert self._promotion is not None
            self._promotion.set_result(result)
            return

    # -- where the state comes from --------------------------------------------------------

    async def _bootstrap(self) -> bool:
        """Adopt a state this node can prove: the newest verified snapshot, or command 1.

        Until there is one the node stays halted (``HistoryLost``), looking again every
        ``bootstrap_retry`` seconds; it never starts from a state it cannot prove. Returns
        False if, on a re-bootstrap, the stream still holds what replay needs next."""
        snapshots = self.settings.snapshots
        store = self._snapshotter.store if self._snapshotter and snapshots.bootstrap else None
        while True:
            try:
                bounds = await stream_bounds(self._nc, self.settings.journal)
                if self._snapshotter is not None:
                    self._snapshotter.stream_created = bounds.created
                if self._start is not None and bounds.first_seq <= self._position().stream_seq + 1:
                    start = None  # the history we need is there after all: replay on
                else:
                    start = await find_start(store, self._new_state, bounds)
                break
            except HistoryLost as exc:
                if self.progress.error is None or str(self.progress.error) != str(exc):
                    logger.error("cannot start: %s", exc)
                self._last_error = str(exc)
                self.progress.halt(exc)
            except (JournalUnavailable, SnapshotError) as exc:
                if isinstance(exc, SnapshotError) and exc.reason == Refusal.CLOSED:
                    raise
                logger.warning("bootstrap: cannot read the stream or snapshots, retrying: %s", exc)
            await asyncio.sleep(snapshots.bootstrap_retry)
        if start is None:
            return False
        self._adopt(start)
        self.progress.resume(self._position().stream_seq)
        self._last_error = None
        return True

    def _new_state(self) -> ReplicatedState:
        return ReplicatedState(self._engine_factory())

    def _adopt(self, start: Start) -> None:
        if self._start is not None or start.snapshot is not None:
            if self._heap_frozen:  # else the replaced state, frozen, is never collected
                heap.unfreeze()
                self._heap_frozen = False
            self.state = start.state
        self._start = start
        self._heap_due = self.settings.freeze_heap
        self.progress.set_replay_cursor(start.stream_seq)
        if self._snapshotter is not None:
            self._snapshotter.restart_count(start.state.last_seq)
        logger.info(
            "starting from %s: command seq %d, stream seq %d; replay resumes at stream seq %d",
            start.source,
            start.state.last_seq,
            start.stream_seq,
            start.stream_seq + 1,
        )

    async def _wait_out_halt(self, error: ReplayError) -> None:
        """Stay halted until an operator action (:meth:`skip`) clears the halt."""
        self._last_error = str(error)
        self._fail_promotion(PromotionRefused(f"replay halted: {error}"))
        await self._resume.wait()  # set by skip(), which may come before we get here
        self._resume.clear()
        self._last_error = None
        self._forget_promotion(PromotionRefused(f"replay halted: {error}"))

    def _hole(self, lost: HistoryLost) -> HistoryLost:
        """Messages missing in the middle of the stream (deleted, which ``deny_delete``
        forbids): no snapshot or skip can make up for them; the node must be rebuilt."""
        hole = HistoryLost(
            f"stream seqs {lost.stream_seq}..{lost.first_stream_seq - 1} are missing in the "
            "middle of the stream (deleted, though the stream denies deletes): this node "
            "cannot go on; rebuild it from a snapshot taken after them",
            stream_seq=lost.stream_seq or 0,
            first_stream_seq=lost.first_stream_seq,
        )
        logger.error("%s", hole)
        self.progress.halt(hole)
        return hole

    def _forget_promotion(self, error: PromotionRefused) -> None:
        """Fail a pending promotion and unlatch the promote signal, so that nothing asked
        before a halt fires on its own once replay resumes (a start as primary stays)."""
        if self._as_primary and self._promotion is not None:
            return
        self._fail_promotion(error)
        self._sender, self._signal = promote_channel()

    def _max_body(self) -> int | None:
        max_payload = self._nc.max_payload
        return wire.max_body(max_payload) if max_payload else None

    def _position(self) -> Position:
        return Position(
            self.state.last_seq, self.progress.replay_cursor_seq or 0, self.state.last_msg_id
        )

    async def _take_over(self) -> PromoteResult:
        """Drain, then append the epoch marker. Commands another writer (the old primary,
        still alive) appended meanwhile are replayed and the marker tried again; a newer
        epoch marker means another node won this promotion, and this one refuses."""
        journal_settings = self.settings.journal
        if self._as_primary and self._promotion_floor is None:  # no request saw the tail
            self._promotion_floor = await self._feed.last_stream_seq()
        assert self._promotion_floor is not None
        for attempt in range(1, self.settings.promote_attempts + 1):
            await self._drain_to_tail()
            if self.progress.epoch_stream_seq > self._promotion_floor:
                raise PromotionRefused(
                    f"node {self.state.epoch_node} took epoch {self.state.epoch} with a marker at "
                    f"stream seq {self.progress.epoch_stream_seq}, after the tail this node "
                    f"knew when asked ({self._promotion_floor}): it was promoted meanwhile; "
                    "check which node is primary, and ask again if this one should take over"
                )
            after = self._position()
            epoch, seq = self.state.epoch + 1, self.state.last_seq + 1
            self._check_writer_version(self._promotion_forced)  # the tail's, after draining
            marker = marker_envelope(
                seq=seq,
                epoch=epoch,
                node=self.settings.node_id,
                timestamp_ns=time.time_ns(),
                engine_version=self.state.engine.version,
            )
            msg_id = marker_msg_id(epoch, seq, self.settings.node_id)
            try:
                ack = await append_fenced(
                    self._nc, journal_settings, marker, msg_id=msg_id, after=after
                )
            except FencedError as exc:
                logger.warning("epoch marker %s refused (attempt %d): %s", msg_id, attempt, exc)
                continue
            self.state.apply(marker)
            self.progress.set_replay_cursor(ack.stream_seq)
            journal = await CommandJournal.open(
                self._nc,
                journal_settings,
                epoch=epoch,
                after=Position(seq, ack.stream_seq, msg_id),
                on_terminal=self._lost,
            )
            self._primary = PrimaryService(
                self._nc,
                wire.submit_subject(journal_settings.journal),
                self.state,
                journal,
                self._lost,
                checkpoint_every=self.settings.checkpoint_every,
                max_backlog=self.settings.max_backlog,
            )
            await self._primary.start()
            took = (time.monotonic() - self._promotion_started) * 1000
            return PromoteResult(
                role=Role.PRIMARY,
                epoch=epoch,
                seq=seq,
                took_ms=round(took, 3),
                forced=self._promotion_forced,
            )
        raise PromotionRefused(
            f"another writer kept appending: {self.settings.promote_attempts} epoch markers refused"
        )

    async def _drain_to_tail(self) -> None:
        """Apply everything the stream holds now, then stop (replay is not running here)."""
        tail = await self._feed.last_stream_seq()
        if (self.progress.replay_cursor_seq or 0) >= tail:
            return
        sender, signal = promote_channel()
        replay = asyncio.get_running_loop().create_task(
            run_replay_loop(
                self._feed,
                self.state,
                self.progress,
                signal,
                start_after=self._position(),
                settings=self.settings.replay,
                max_body=self._max_body(),
            )
        )
        reached = asyncio.get_running_loop().create_task(
            self.progress.wait_for(lambda p: (p.replay_cursor_seq or 0) >= tail)
        )
        try:
            await asyncio.wait({replay, reached}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when cancelled: never leave a replay (and its consumer) behind
            reached.cancel()
            sender.promote()
        await replay  # raises ReplayError if replay halted on the way

    def _lost(self, error: JetstandbyError) -> None:
        """The primary's journal is fenced or failed: stop serving, for good."""
        if self.role is Role.FENCED:
            return
        self._last_error = str(error)
        self.deposed = isinstance(error, FencedError)
        reason = "deposed by a newer epoch" if self.deposed else f"cannot go on: {error}"
        logger.error("%s: %s", reason, error)
        self._transition(Role.FENCED, reason)
        self._finished.set()

    # -- promotion requests -----------------------------------------------------------------

    async def promote(
        self,
        *,
        force: bool = False,
        reason: str | None = None,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> PromoteResult:
        """Start (or join) promotion. Raises :class:`PromotionRefused` with a reason a person
        can act on, :class:`TimeoutError` if ``wait`` and it is not serving within ``timeout``.
        Idempotent: a repeated call returns the same result.

        An epoch marker after the stream tail this node knew when asked, met while it drains,
        means another node was promoted meanwhile: this one refuses and names it."""
        floor = self.progress.latest_stream_seq  # before any await: the tail known when asked
        if force and not (reason and reason.strip()):
            raise ConfigError("reason", "a forced promotion needs a reason")
        if not self._started.is_set():
            raise PromotionRefused("the node is still starting: its journal stream is not open")
        if self.role is Role.FENCED:
            raise PromotionRefused("this node is a deposed primary; start it again as a standby")
        async with self._promote_lock:  # concurrent requests join one promotion
            if self._promotion is None:
                tail = await self._check_promotable(force)
                if self.progress.error is not None:  # halted while we read the tail
                    raise PromotionRefused(f"replay halted: {self.progress.error}")
                self._promotion_floor = tail if floor is None else floor
                if force:
                    logger.warning("FORCED promotion of %s: %s", self.settings.node_id, reason)
                self._begin_promotion(forced=force, reason=reason or "admin request")
        assert self._promotion is not None
        promotion = self._promotion
        if not wait and not promotion.done():
            return PromoteResult(
                role=self.role,
                epoch=self.state.epoch,
                seq=self.state.last_seq,
                took_ms=0.0,
                forced=self._promotion_forced,
            )
        already = promotion.done()
        result = await asyncio.wait_for(asyncio.shield(promotion), timeout)
        return msgspec.structs.replace(result, already_promoted=already)

    def _check_writer_version(self, force: bool) -> None:
        """The version gate: an engine older than the journal's writer may not write it."""
        ours, theirs = self.state.engine.version, self.state.writer_engine_version
        if ours < theirs and not force:
            raise PromotionRefused(
                f"this node's engine {self.state.engine.name} v{ours} is older than v{theirs}, "
                "which wrote the journal's tail: upgrade this node first (or force with a "
                "reason)"
            )

    async def _check_promotable(self, force: bool) -> int:
        """Refuse an unsafe promotion; returns the stream's tail."""
        error = self.progress.error
        if isinstance(error, DivergenceError):
            raise PromotionRefused(
                f"this node DIVERGED from the journal's writer at command seq "
                f"{error.checkpoint_seq}: it can never be promoted, not even by force; "
                "rebuild it from a snapshot or a full replay"
            )
        self._check_writer_version(force)
        if self.progress.error is not None:
            raise PromotionRefused(
                f"replay halted at seq {self.progress.error.seq} "
                f"(stream seq {self.progress.error.stream_seq}): {self.progress.error}; "
                "fix the cause before promoting this node"
            )
        try:
            tail = await asyncio.wait_for(self._feed.last_stream_seq(), 2.0)
        except (JetstandbyError, TimeoutError) as exc:
            raise PromotionRefused(f"the journal stream is unreachable: {exc!r}") from exc
        lag = tail - (self.progress.replay_cursor_seq or 0)
        if lag > self.settings.max_promote_lag and not force:
            raise PromotionRefused(
                f"lag is {lag} commands, over the bound of {self.settings.max_promote_lag}: "
                "wait for the standby to catch up, or force with a reason"
            )
        return tail

    def _begin_promotion(self, *, forced: bool, reason: str) -> None:
        self._promotion = asyncio.get_running_loop().create_future()
        self._promotion_started = time.monotonic()
        self._promotion_forced = forced
        logger.info("promotion requested: %s", reason)
        self._sender.promote()

    def _fail_promotion(self, error: PromotionRefused) -> None:
        if self._promotion is not None and not self._promotion.done():
            self._promotion.set_exception(error)
            self._promotion.exception()  # retrieved: a refusal nobody awaits is not an error
        self._promotion = None

    # -- operator actions -------------------------------------------------------------------

    async def skip(self, *, stream_seq: int, reason: str) -> SkipResult:
        """Pass over the one message replay halted on, and resume. Logged loudly.

        Raises :class:`ActionRefused` unless replay is halted at exactly ``stream_seq`` on a
        message a skip can clear (not a divergence or lost history), :class:`ConfigError`
        for a blank reason, :class:`JournalUnavailable` if the message cannot be read."""
        if not reason.strip():
            raise ConfigError("reason", "a skip needs a reason: it is logged and kept in status")
        async with self._promote_lock:  # one operator action at a time
            return await self._skip(stream_seq, reason)

    async def _skip(self, stream_seq: int, reason: str) -> SkipResult:
        error = self._check_skippable(stream_seq)
        envelope = await self._envelope_at(stream_seq)
        consumed = None
        if envelope is not None and envelope.seq == self.state.last_seq + 1:
            self.state.skip_command(envelope)
            consumed = envelope.seq
        record = SkipResult(
            stream_seq=stream_seq,
            seq=consumed,
            reason=reason,
            halted_on=str(error),
            at_unix_ms=time.time_ns() // 1_000_000,
        )
        self._skipped.append(record)
        logger.warning(
            "OPERATOR SKIP of stream seq %d (command seq %s) on %s: reason=%r; halted on: %s",
            stream_seq,
            consumed,
            self.settings.node_id,
            reason,
            error,
        )
        self.progress.resume(stream_seq)
        self._resume.set()
        return record

    async def take_snapshot(self, *, reason: str | None) -> SnapshotMeta:
        """Snapshot this standby's state now and store it (keeping the newest ``keep``).

        Raises :class:`ActionRefused` on a primary (it never pauses for one), a node without
        a snapshot store, or one whose state is not proven (starting, halted, diverged);
        :class:`JournalUnavailable` or :class:`SnapshotError` if the store fails."""
        if self._snapshotter is None:
            raise ActionRefused(
                "snapshots are disabled on this node (snapshots.enabled)", action="snapshot"
            )
        self._snapshot_position()  # refuse at once, not after waiting for a running one
        logger.info("snapshot requested: %s", reason or "no reason given")
        try:
            return await self._snapshotter.take(self._snapshot_position)
        except JetstandbyError:
            raise
        except Exception as exc:  # the engine's snapshot() or digest() raised
            logger.exception("snapshot failed: the engine raised")
            raise SnapshotError(
                f"the engine could not snapshot its state: {exc!r}", reason=Refusal.CAPTURE
            ) from exc

    def _snapshot_position(self) -> tuple[ReplicatedState, int]:
        """The state and the stream seq it holds; refuses unless this is a standby with a
        proven state. Called again inside the snapshot lock, right before the capture."""
        if self.role is not Role.STANDBY:
            raise ActionRefused(
                f"this node is {self.role}: take snapshots on a standby, the primary never "
                "pauses for one",
                action="snapshot",
            )
        if self.progress.error is not None or self._start is None:
            problem = str(self.progress.error) if self.progress.error else "it is starting"
            raise ActionRefused(f"no proven state to snapshot: {problem}", action="snapshot")
        return self.state, self.progress.replay_cursor_seq or 0

    def _check_skippable(self, stream_seq: int) -> ReplayError:
        error = self.progress.error
        if error is None or self.role is not Role.STANDBY:
            raise ActionRefused("replay is not halted: there is nothing to skip", action="skip")
        if isinstance(error, DivergenceError | HistoryLost):
            raise ActionRefused(
                f"replay halted on {error}; skipping a message cannot repair that: "
                "rebuild this node from a snapshot or a full replay",
                action="skip",
            )
        if error.stream_seq != stream_seq:
            raise ActionRefused(
                f"replay halted at stream seq {error.stream_seq}; only that message can be "
                f"skipped, not stream seq {stream_seq}",
                action="skip",
            )
        return error

    async def _envelope_at(self, stream_seq: int) -> wire.Envelope | None:
        message = await message_at(self._nc, self.settings.journal, stream_seq)
        if message is None:
            return None
        try:
            return wire.decode(message.data, stream_seq=stream_seq)
        except WireError:
            return None

    # -- status -----------------------------------------------------------------------------

    def _transition(self, to: Role, reason: str) -> None:
        before = self.role if self._transitions else None
        self.role = to
        self._transitions.append(Transition(before, to, time.time_ns() // 1_000_000, reason))
        logger.info(
            "role %s -> %s (%s) node=%s epoch=%d",
            before,
            to,
            reason,
            self.settings.node_id,
            self.state.epoch,
        )

    def digest(self) -> str:
        """The engine's state digest (hex), recomputed only when the state has moved."""
        return self.state.digest().hex()

    def status(self) -> NodeStatus:
        p, primary = self.progress, self._primary
        halted = p.error is not None
        cursor, latest, caught_up = p.replay_cursor_seq, p.latest_stream_seq, p.caught_up
        if primary is not None and self.role is Role.PRIMARY:
            cursor = latest = primary.stored_stream_seq
            caught_up = True
        ready = (self.role is Role.PRIMARY) or (
            self.role is Role.STANDBY and p.caught_up and not halted
        )
        lag = p.stream_lag if self.role is not Role.PRIMARY else 0
        eta = (
            (lag / self._apply_rate)
            if lag and self._apply_rate > 0
            else (0.0 if lag == 0 else None)
        )
        return NodeStatus(
            node_id=self.settings.node_id,
            role=self.role,
            epoch=self.state.epoch,
            journal=self.settings.journal.journal,
            engine_name=self.state.engine.name,
            engine_version=self.state.engine.version,
            ready=ready,
            halted=halted,
            commands_replayed=p.commands_replayed,
            caught_up=caught_up,
            replay_cursor_seq=cursor,
            last_replayed_seq=p.last_replayed_seq,
            last_replay_unix_ms=p.last_replay_unix_ms,
            latest_stream_seq=latest,
            last_applied_seq=self.state.last_seq,
            last_apply_delay_ms=self._apply_delay_ms(),
            state_digest=self.state.compared_digest().hex(),
            stream_lag=lag,
            lag_ms=round(self._lag_ms, 3) if self.role is Role.STANDBY else 0.0,
            apply_rate=round(self._apply_rate, 1),
            catch_up_eta_s=eta,
            duplicates_skipped=p.duplicates_skipped,
            resubscribes=p.resubscribes,
            last_error=self._last_error or (str(p.error) if p.error else None),
            submissions_acknowledged=primary.acknowledged if primary else 0,
            submissions_rejected=primary.rejected if primary else 0,
            submissions_overloaded=primary.overloaded if primary else 0,
            submissions_deduplicated=primary.deduplicated if primary else 0,
            transitions=list(self._transitions),
            skipped=list(self._skipped),
            **self._replica_status(),
        )

    def _replica_status(self) -> dict[str, Any]:
        """Snapshots, checkpoints, the version gate and retention."""
        snapshotter, bounds = self._snapshotter, self._retention.bounds
        return {
            "accepts": {t: sorted(v) for t, v in self.state.engine.accepts.items()},
            "writer_engine_version": self.state.writer_engine_version,
            "last_checkpoint_seq": self.state.last_checkpoint_seq,
            "diverged": isinstance(self.progress.error, DivergenceError),
            "started_from": self._start.source if self._start else None,
            "stream_first_seq": bounds.first_seq if bounds else None,
            "retention_headroom": self._retention.headroom(self._following()),
            "retention_warning": self._retention.warning,
            "snapshots_taken": snapshotter.taken if snapshotter else 0,
            "last_snapshot_seq": snapshotter.last.seq if snapshotter and snapshotter.last else None,
            "last_snapshot_error": snapshotter.last_error if snapshotter else None,
        }

    def _apply_delay_ms(self) -> float | None:
        p = self.progress
        if self.role is not Role.STANDBY or not p.last_replay_unix_ms or not p.last_timestamp_ns:
            return None
        return round(max(0.0, p.last_replay_unix_ms - p.last_timestamp_ns / 1e6), 3)

    async def _tick(self) -> None:
        """Apply rate and time lag: the age of the oldest command not yet applied; and the
        heap freeze once the adopted state is built."""
        last_count, last_time = self.progress.commands_replayed, time.monotonic()
        while True:
            await asyncio.sleep(TICK)
            self._freeze_heap_once_built()
            now = time.monotonic()
            count = self.progress.commands_replayed
            rate = (count - last_count) / max(now - last_time, 1e-9)
            self._apply_rate += RATE_SMOOTHING * (rate - self._apply_rate)
            last_count, last_time = count, now
            self._lag_ms = await self._oldest_unapplied_age_ms()

    async def _housekeeping(self) -> None:
        """Once a second: the retention headroom, and a periodic snapshot when one is due."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                self._retention.bounds = await stream_bounds(self._nc, self.settings.journal)
            except JetstandbyError as exc:
                logger.debug("stream bounds unavailable: %s", exc)
            self._retention.check(self._following())
            if self._snapshot_due():
                assert self._snapshotter is not None
                try:
                    await self._snapshotter.take(self._snapshot_position)
                except JetstandbyError as exc:  # kept in status and metrics; tried again later
                    logger.warning("periodic snapshot failed: %s", exc)
                except Exception:  # the engine's snapshot() raised: a bug, but not a halt
                    logger.exception("periodic snapshot failed; the engine raised")

    def _freeze_heap_once_built(self) -> None:
        """Freeze the heap (:mod:`jetstandby.heap`) once per adopted state, when it is
        built: caught up as a healthy standby, or serving as primary."""
        built = self.role is Role.PRIMARY or (
            self.role is Role.STANDBY and self.progress.caught_up and self.progress.error is None
        )
        if self._heap_due and built:
            self._heap_due, self._heap_frozen = False, True
            heap.freeze_long_lived()
            logger.info(
                "heap frozen: the built state left out of full collections node=%s",
                self.settings.node_id,
            )

    def _snapshot_due(self) -> bool:
        return (
            self._snapshotter is not None
            and self.role is Role.STANDBY
            and self._start is not None
            and self.progress.error is None
            and self._snapshotter.due(self.state.last_seq)
        )

    def _following(self) -> int | None:
        """The replay cursor of a standby following the stream; ``None`` otherwise."""
        if self.role is not Role.STANDBY or self._start is None:
            return None
        return self.progress.replay_cursor_seq or 0

    async def _oldest_unapplied_age_ms(self) -> float:
        if self.role is not Role.STANDBY or not self.progress.stream_lag:
            return 0.0  # nothing pending: an idle primary does not make us look late
        next_seq = (self.progress.replay_cursor_seq or 0) + 1
        try:
            message = await message_at(self._nc, self.settings.journal, next_seq)
            if message is None:
                return 0.0
            timestamp = wire.decode(message.data, stream_seq=next_seq).timestamp_ns
        except JetstandbyError:
            return self._lag_ms
        return max(0.0, (time.time_ns() - timestamp) / 1e6)
