"""Engine snapshots in the JetStream Object Store: store, list, read fast, verify, choose.

Storage. One bucket per journal, ``JSB_SNAP_<JOURNAL>`` (its stream is
``OBJ_JSB_SNAP_<JOURNAL>``), file storage. A snapshot is one object named
``snap-<seq, 20 digits>-<epoch>-<node_id>``, so names sort by command seq. Its
:class:`SnapshotMeta`, as JSON, is the object's ``description``: nats-py 2.16's object meta
has a description and headers but no metadata map, and a description is shown by every
tool. Every :meth:`SnapshotStore.put` then deletes all but the newest ``keep`` snapshots.

Reading. nats-py's ``ObjectStore.get`` grows one ``bytes`` chunk by chunk, which is
quadratic (nats-io/nats.py#703): about 10 s for 50 MB here. :meth:`SnapshotStore.get` reads the
object's chunk subject with batched direct gets (``$JS.API.DIRECT.GET``, nats-server 2.11+).
These need no consumer, so there is nothing to create or to leak. Each batch is capped at
:data:`READ_WINDOW_BYTES`, so the server never queues more than that for one reader. The
chunks are joined once at the end, and the SHA-256 is taken as they arrive, then checked
against both the object store's digest and the snapshot's own ``sha256``.

Trust. :func:`verify` (pure) and :func:`restore_verified` refuse a snapshot with a
:class:`~jetstandby.errors.SnapshotError` whose ``reason`` is a :class:`Refusal`.
:func:`choose` walks the snapshots newest first and restores the first one that passes.

Like ``journal/``, this module talks to NATS itself, and every nats error is translated at
the boundary: :class:`~jetstandby.errors.JournalUnavailable` when JetStream does not answer,
:class:`~jetstandby.errors.SnapshotError` when it refuses or the data is bad.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Final, Self

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig, StorageType, StreamInfo
from nats.js.object_store import (
    OBJ_ALL_META_PRE_TEMPLATE,
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_DIGEST_TYPE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)

from jetstandby.config import JournalSettings
from jetstandby.errors import ConfigError, JournalUnavailable, SnapshotError
from jetstandby.journal.stream import NatsClient
from jetstandby.snapshots.meta import (
    DEFAULT_KEEP,
    E,
    Refusal,
    Restored,
    SnapshotMeta,
    bucket_name,
    check_bytes,
    check_meta,
    check_size,
    check_sum,
    refused,
    restore_verified,
)

logger = logging.getLogger(__name__)

#: nats-py's default chunk size, set explicitly so that no reader depends on the default.
CHUNK_SIZE: Final = 128 * 1024
#: Bytes one direct-get batch may return; bounds what the server queues for one reader.
READ_WINDOW_BYTES: Final = 8 * 1024 * 1024
#: Messages one direct-get batch may return.
READ_BATCH: Final = 1024
# A replicated bucket's direct gets are answered by any replica, and one may lag the replica
# that served the object's meta, so a short read is retried before it counts as truncation.
SHORT_READ_ATTEMPTS: Final = 5
SHORT_READ_BACKOFF: Final = 0.05

_NODE_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HDR_STATUS: Final = "Status"
_HDR_DESCRIPTION: Final = "Description"
_HDR_SEQUENCE: Final = "Nats-Sequence"
_HDR_NUM_PENDING: Final = "Nats-Num-Pending"
_STATUS_NO_MESSAGE: Final = "404"
_STATUS_END_OF_BATCH: Final = "204"

# Errors that mean JetStream did not answer (retry later); every other nats error is a
# refusal of the request itself.
_UNAVAILABLE: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    OSError,
)


_meta_decoder: Final = msgspec.json.Decoder(SnapshotMeta)


async def load_verified(
    store: SnapshotStore,
    meta: SnapshotMeta,
    engine_factory: Callable[[], E],
    *,
    stream_first_seq: int,
    stream_last_seq: int,
    stream_created: str = "",
) -> E:
    """Fetch snapshot ``meta`` and restore it into a fresh engine, proving every check:
    metadata (:func:`check_meta`), bytes (size, SHA-256) and the restored state's digest.
    Raises :class:`SnapshotError` naming the first that fails."""
    check_meta(
        meta,
        engine=engine_factory(),
        stream_first_seq=stream_first_seq,
        stream_last_seq=stream_last_seq,
        stream_name=store.settings.stream,
        stream_created=stream_created,
    )
    data = await store.get(meta)  # checks the bytes as check_bytes() does
    return restore_verified(engine_factory, data, meta)


async def choose(
    store: SnapshotStore,
    engine_factory: Callable[[], E],
    *,
    stream_first_seq: int,
    stream_last_seq: int,
    stream_created: str = "",
) -> Restored[E] | None:
    """Restore the newest snapshot that passes verification, or return ``None``.

    Snapshots are tried newest first (:func:`load_verified`). Each refused one is logged
    with the reason, and the next older one is tried. ``None`` means none passed: the caller
    replays from command 1 if the journal still has it, and halts otherwise. The stream
    bounds are those of the journal's stream now. Raises :class:`JournalUnavailable` if the
    store does not answer, and :class:`SnapshotError` if it cannot be listed (refused by
    JetStream, or closed).
    """
    metas = await store.list()
    for meta in metas:
        try:
            engine = await load_verified(
                store,
                meta,
                engine_factory,
                stream_first_seq=stream_first_seq,
                stream_last_seq=stream_last_seq,
                stream_created=stream_created,
            )
        except SnapshotError as exc:
            if exc.reason == Refusal.CLOSED:
                raise
            logger.warning("%s; falling back to the next older snapshot", exc)
            continue
        logger.info(
            "restored snapshot %s: seq %d, stream seq %d, epoch %d, %d bytes; "
            "replay resumes at stream seq %d",
            meta.name,
            meta.seq,
            meta.stream_seq,
            meta.epoch,
            meta.size,
            meta.stream_seq + 1,
        )
        return Restored(meta, engine)
    logger.log(
        logging.WARNING if metas else logging.INFO,
        "no usable snapshot among %d in bucket %s: replay has to start from command 1",
        len(metas),
        store.bucket,
    )
    return None


# --- the store -------------------------------------------------------------------------------


@contextlib.contextmanager
def _translated(action: str, *, snapshot: str | None = None) -> Iterator[None]:
    try:
        yield
    except _UNAVAILABLE as exc:
        raise JournalUnavailable(f"{action}: JetStream did not answer: {exc!r}") from exc
    except nats.errors.Error as exc:
        raise SnapshotError(
            f"{action}: JetStream refused: {exc}", reason=Refusal.STORE, snapshot=snapshot
        ) from exc


class _ObjectOptions(msgspec.Struct):
    link: dict[str, object] | None = None


class _ObjectInfo(msgspec.Struct):
    """The object store's meta message; nats-py and the Go client write the same JSON."""

    name: str = ""
    nuid: str = ""
    size: int = 0
    chunks: int = 0
    digest: str = ""
    deleted: bool = False
    description: str | None = None
    options: _ObjectOptions | None = None


_info_decoder: Final = msgspec.json.Decoder(_ObjectInfo)


@dataclass(slots=True)
class _Cursor:
    """Where a batched read stands: the next stream seq to ask for, and what came so far."""

    next_seq: int = 1
    count: int = 0
    more: bool = True


class _Lifecycle(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


def _name_of(snapshot: str | SnapshotMeta) -> str:
    return snapshot if isinstance(snapshot, str) else snapshot.name


def _age(meta: SnapshotMeta) -> tuple[int, int, int, str]:
    return meta.seq, meta.epoch, meta.taken_at_unix_ms, meta.name


class SnapshotStore:
    """The snapshots of one journal, in its Object Store bucket. Build it with :meth:`open`.

    It does not own the connection: :meth:`aclose` (idempotent) ends this store and leaves
    ``nc`` open. Calls after that raise :class:`SnapshotError` (``closed``). Errors: see
    each method, plus :class:`JournalUnavailable` whenever JetStream does not answer.
    """

    def __init__(
        self,
        nc: NatsClient,
        settings: JournalSettings,
        *,
        js: JetStreamContext,
        objects: ObjectStore,
        keep: int,
        replicated: bool,
    ) -> None:
        self._nc = nc
        self._settings = settings
        self._js = js
        self._objects = objects
        self._keep = keep
        self._replicated = replicated
        self._bucket = bucket_name(settings.journal)
        self._stream = OBJ_STREAM_TEMPLATE.format(bucket=self._bucket)
        self._direct = f"$JS.API.DIRECT.GET.{self._stream}"
        self._timeout = settings.request_timeout
        self._state = _Lifecycle.OPEN

    @classmethod
    async def open(
        cls,
        nc: NatsClient,
        settings: JournalSettings,
        *,
        replicas: int = 1,
        keep: int = DEFAULT_KEEP,
        create: bool = True,
    ) -> SnapshotStore:
        """Bind the journal's snapshot bucket, creating it (file storage) if it is missing.

        ``replicas`` applies only when the bucket is created: an existing one is used as it
        is. ``keep``: how many of the newest snapshots :meth:`put` keeps. ``create=False``
        (read-only tools): a missing bucket is a :class:`SnapshotError` (``missing``). Raises
        :class:`ConfigError` for a bad argument, and :class:`SnapshotError` (``store``) if
        the bucket cannot be created or does not allow direct gets.
        """
        if replicas not in (1, 3, 5):
            raise ConfigError("replicas", f"must be 1, 3 or 5, got {replicas!r}")
        if not isinstance(keep, int) or keep < 1:
            raise ConfigError("keep", f"must be a positive integer, got {keep!r}")
        bucket = bucket_name(settings.journal)
        js = nc.jetstream(timeout=settings.request_timeout)
        with _translated(f"opening snapshot bucket {bucket}"):
            info = await _bind_or_create(js, bucket, replicas, create=create)
        if not info.config.allow_direct:
            raise SnapshotError(
                f"snapshot bucket {bucket} does not allow direct gets; recreate it",
                reason=Refusal.STORE,
            )
        stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
        return cls(
            nc,
            settings,
            js=js,
            objects=ObjectStore(name=bucket, stream=stream, js=js),
            keep=keep,
            replicated=(info.config.num_replicas or 1) > 1,
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def settings(self) -> JournalSettings:
        return self._settings

    @property
    def keep(self) -> int:
        return self._keep

    async def put(self, data: bytes, meta: SnapshotMeta) -> SnapshotMeta:
        """Store ``data`` as snapshot ``meta``, then delete all but the newest ``keep``.

        ``meta`` must describe ``data`` (size and sha256, as :func:`capture` makes them) and
        this journal, or :class:`SnapshotError` is raised and nothing is stored. Putting the
        same snapshot again replaces it. Returns ``meta``.
        """
        self._check_open()
        name = meta.name
        if meta.journal != self._settings.journal or meta.stream != self._settings.stream:
            raise refused(
                name,
                Refusal.STREAM,
                f"taken from journal {meta.journal!r} (stream {meta.stream!r}), "
                f"this store holds journal {self._settings.journal!r}",
            )
        if not _NODE_ID.match(meta.node_id):
            raise refused(name, Refusal.METADATA, f"node id {meta.node_id!r} is not a safe name")
        # In a thread: a SHA-256 of a 16 MB snapshot is ~10 ms that a standby's event loop,
        # and so its replay, would otherwise stop for (hashlib releases the GIL).
        await asyncio.to_thread(check_bytes, data, meta)
        object_meta = ObjectMeta(
            name=name,
            description=msgspec.json.encode(meta).decode(),
            options=ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
        )
        with _translated(f"storing snapshot {name}", snapshot=name):
            await self._objects.put(name, data, meta=object_meta)
        logger.debug(
            "stored snapshot %s in %s: seq %d, stream seq %d, epoch %d, %d bytes",
            name,
            self._bucket,
            meta.seq,
            meta.stream_seq,
            meta.epoch,
            meta.size,
        )
        await self.prune(meta)
        return meta

    async def get(self, snapshot: str | SnapshotMeta) -> bytes:
        """The bytes of a snapshot, read fast and checked.

        They are checked against the object store's SHA-256 and chunk count and against the
        snapshot's own size and sha256. Given a :class:`SnapshotMeta`, the stored one must
        still equal it. Raises :class:`SnapshotError`: ``missing``, ``metadata``, ``size``
        (truncated) or ``checksum``.
        """
        self._check_open()
        name = _name_of(snapshot)
        info = await self._object_info(name)
        if info is None:
            raise refused(name, Refusal.MISSING, f"no such object in bucket {self._bucket}")
        meta = self._meta_of(info)
        if isinstance(snapshot, SnapshotMeta) and meta != snapshot:
            raise refused(name, Refusal.METADATA, "the stored metadata changed since listing")
        data, sha256 = await self._read_object(name, info)
        check_size(meta, len(data))
        check_sum(meta, sha256)
        return data

    async def delete(self, snapshot: str | SnapshotMeta) -> bool:
        """Delete a snapshot: its chunks, then its meta. Returns ``False`` if there was none.

        Nothing is left behind, not even a tombstone. If this fails half-way, the snapshot
        stays listed and a later :meth:`get` refuses it as truncated.
        """
        self._check_open()
        name = _name_of(snapshot)
        info = await self._object_info(name)
        if info is None:
            return False
        with _translated(f"deleting snapshot {name}", snapshot=name):
            if info.nuid:
                chunks = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._bucket, obj=info.nuid)
                await self._js.purge_stream(self._stream, subject=chunks)
            await self._js.purge_stream(self._stream, subject=self._meta_subject(name))
        return True

    async def prune(self, current: SnapshotMeta | None = None) -> builtins.list[SnapshotMeta]:
        """Delete all but the newest ``keep`` snapshots; returns the deleted ones.

        With ``current`` (the snapshot just stored), snapshots of another generation of the
        stream (another ``stream``/``stream_created``, which no node can use) go first and
        never count against ``keep``, so they cannot push out the one just stored."""
        metas = await self.list()
        if current is not None:
            same = [m for m in metas if _same_stream(m, current)]
            foreign = [m for m in metas if not _same_stream(m, current)]
            doomed = foreign + same[self._keep :]
        else:
            doomed = metas[self._keep :]
        for meta in doomed:
            if await self.delete(meta):
                logger.info(
                    "deleted snapshot %s (seq %d): %s keeps the newest %d",
                    meta.name,
                    meta.seq,
                    self._bucket,
                    self._keep,
                )
        return doomed

    async def aclose(self) -> None:
        """End this store. Idempotent; the connection stays open (it is not ours)."""
        self._state = _Lifecycle.CLOSED

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def list(self) -> builtins.list[SnapshotMeta]:
        """Every snapshot in the bucket, newest first (by seq, then epoch, then time taken).

        Objects whose metadata is not a snapshot's are logged and left out.
        """
        self._check_open()
        raw: builtins.list[bytes] = []
        all_meta = OBJ_ALL_META_PRE_TEMPLATE.format(bucket=self._bucket)
        with _translated(f"listing snapshots in {self._bucket}"):
            await self._read(all_meta, want=None, on_message=raw.append)
        metas: builtins.list[SnapshotMeta] = []
        for payload in raw:
            try:
                info = _info_decoder.decode(payload)
                if not info.deleted:
                    metas.append(self._meta_of(info))
            except (msgspec.DecodeError, SnapshotError) as exc:
                logger.warning("skipping an object in %s: %s", self._bucket, exc)
        metas.sort(key=_age, reverse=True)
        return metas

    # --- reading ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is _Lifecycle.CLOSED:
            raise SnapshotError(f"snapshot store {self._bucket} is closed", reason=Refusal.CLOSED)

    def _meta_subject(self, name: str) -> str:
        encoded = base64.urlsafe_b64encode(name.encode()).decode()
        return OBJ_META_PRE_TEMPLATE.format(bucket=self._bucket, obj=encoded)

    def _meta_of(self, info: _ObjectInfo) -> SnapshotMeta:
        try:
            meta = _meta_decoder.decode(info.description or "")
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise refused(
                info.name, Refusal.METADATA, f"its description is no snapshot metadata: {exc}"
            ) from None
        if meta.name != info.name:
            raise refused(info.name, Refusal.METADATA, f"its metadata names {meta.name}")
        return meta

    async def _object_info(self, name: str) -> _ObjectInfo | None:
        """The object's current meta, ``None`` if there is none (or only a tombstone)."""
        request = msgspec.json.encode({"last_by_subj": self._meta_subject(name)})
        with _translated(f"reading the meta of snapshot {name}", snapshot=name):
            reply = await self._nc.request(self._direct, request, timeout=self._timeout)
        headers = reply.headers or {}
        status = headers.get(_HDR_STATUS)
        if status == _STATUS_NO_MESSAGE:
            return None
        if status is not None:
            detail = f"direct get answered {status} {headers.get(_HDR_DESCRIPTION, '')}"
            raise refused(name, Refusal.STORE, detail)
        try:
            info = _info_decoder.decode(reply.data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise refused(name, Refusal.METADATA, f"unreadable object meta: {exc}") from None
        return None if info.deleted else info

    async def _read_object(self, name: str, info: _ObjectInfo) -> tuple[bytes, str]:
        """The object's bytes, checked against its chunk count, size and SHA-256 digest,
        and their SHA-256 in hex."""
        if info.options is not None and info.options.link is not None:
            raise refused(name, Refusal.METADATA, "it is a link, not a snapshot")
        chunks: builtins.list[bytes] = []
        sha = hashlib.sha256()

        def take(chunk: bytes) -> None:
            chunks.append(chunk)
            sha.update(chunk)

        if info.chunks > 0:
            subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self._bucket, obj=info.nuid)
            with _translated(f"reading snapshot {name}", snapshot=name):
                await self._read(subject, want=info.chunks, on_message=take)
        data = b"".join(chunks)
        if len(chunks) != info.chunks or len(data) != info.size:
            raise refused(
                name,
                Refusal.SIZE,
                f"truncated in the store: {len(chunks)} of {info.chunks} chunks, "
                f"{len(data)} of {info.size} bytes",
            )
        try:
            stored = base64.urlsafe_b64decode(info.digest.removeprefix(OBJ_DIGEST_TYPE))
        except (binascii.Error, ValueError):
            raise refused(name, Refusal.METADATA, f"bad digest {info.digest!r}") from None
        if sha.digest() != stored:
            raise refused(
                name, Refusal.CHECKSUM, "its bytes do not match the object store's SHA-256"
            )
        return data, sha.hexdigest()

    async def _read(
        self, subject: str, *, want: int | None, on_message: Callable[[bytes], None]
    ) -> int:
        """Hand every message on ``subject`` to ``on_message``, oldest first, until ``want``.

        Batched direct gets, one window at a time, each from where the last one ended.
        Returns how many messages came; fewer than ``want`` means a short read.
        """
        cursor = _Cursor()
        short_reads = 0
        sub = await self._nc.subscribe(self._nc.new_inbox())
        try:
            while True:
                limit = READ_BATCH if want is None else min(READ_BATCH, want - cursor.count)
                await self._read_batch(sub, subject, cursor, limit, on_message)
                if want is not None and cursor.count >= want:
                    break
                if cursor.more:
                    continue
                if want is None:
                    break
                short_reads += 1
                if not self._replicated or short_reads >= SHORT_READ_ATTEMPTS:
                    break
                await asyncio.sleep(SHORT_READ_BACKOFF * short_reads)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return cursor.count

    async def _read_batch(
        self,
        sub: Subscription,
        subject: str,
        cursor: _Cursor,
        limit: int,
        on_message: Callable[[bytes], None],
    ) -> None:
        request = {
            "seq": cursor.next_seq,
            "next_by_subj": subject,
            "batch": limit,
            "max_bytes": READ_WINDOW_BYTES,
        }
        await self._nc.publish(self._direct, msgspec.json.encode(request), reply=sub.subject)
        while True:
            msg = await sub.next_msg(timeout=self._timeout)
            headers = msg.headers or {}
            status = headers.get(_HDR_STATUS)
            if status is None:
                try:
                    cursor.next_seq = int(headers[_HDR_SEQUENCE]) + 1
                except (KeyError, ValueError):
                    raise SnapshotError(
                        f"direct get of {subject} answered without a valid {_HDR_SEQUENCE}",
                        reason=Refusal.STORE,
                    ) from None
                cursor.count += 1
                on_message(msg.data)
            elif status == _STATUS_END_OF_BATCH:
                cursor.more = int(headers.get(_HDR_NUM_PENDING, "0")) > 0
                return
            elif status == _STATUS_NO_MESSAGE:
                cursor.more = False
                return
            else:
                raise SnapshotError(
                    f"direct get of {subject} answered {status} "
                    f"{headers.get(_HDR_DESCRIPTION, '')}",
                    reason=Refusal.STORE,
                )


def _same_stream(a: SnapshotMeta, b: SnapshotMeta) -> bool:
    return a.stream == b.stream and a.stream_created == b.stream_created


async def _bind_or_create(
    js: JetStreamContext, bucket: str, replicas: int, *, create: bool = True
) -> StreamInfo:
    stream = OBJ_STREAM_TEMPLATE.format(bucket=bucket)
    try:
        return await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        if not create:
            raise SnapshotError(
                f"there is no snapshot bucket {bucket}: no node of this journal has run with "
                "snapshots on (or the journal name is wrong)",
                reason=Refusal.MISSING,
            ) from None
    logger.info("creating snapshot bucket %s (file storage, %d replicas)", bucket, replicas)
    config = ObjectStoreConfig(
        description="jetstandby engine snapshots",
        storage=StorageType.FILE,
        replicas=replicas,
    )
    try:
        await js.create_object_store(bucket, config=config)
    except nats.js.errors.BadRequestError as exc:
        # Another node may have created it first, with other settings: use theirs.
        try:
            return await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise exc from None
    return await js.stream_info(stream)
