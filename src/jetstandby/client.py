"""``jetstandby.Client``: submit commands to whichever node is primary, exactly once.

Each submission carries a request id (a fresh UUID unless given). The client retries the
same id with back-off across a failover (no responders, a timeout, a deposed primary, an
unknown outcome) until its deadline; the primary's exactly-once record makes the retries safe.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import msgspec
import nats.errors

from jetstandby import submission, wire
from jetstandby.errors import SubmitError
from jetstandby.journal.stream import NatsClient, close_quietly, connect

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The engine's ``result`` for command ``seq``; ``deduplicated`` if an earlier try of the
    same request id was applied (this is its original outcome)."""

    seq: int
    result: bytes
    request_id: str
    deduplicated: bool
    attempts: int


class Client:
    """Submits commands to the primary of ``journal``. Build with :meth:`connect`, or pass a
    connection you own.

    ``request_timeout`` bounds the first try: a request caught by a primary that dies waits
    this long before it is retried, so it sets the floor of the failover time a client sees.
    Each try that times out doubles the next one's bound, up to ``max_request_timeout``: a
    primary that is only slow is given longer instead of being sent every submission again
    (a retry storm that keeps it slow). Retrying is safe: the request id is deduplicated.
    """

    def __init__(
        self,
        nc: NatsClient,
        journal: str = "default",
        *,
        request_timeout: float = 0.5,
        max_request_timeout: float = 4.0,
        min_backoff: float = 0.02,
        max_backoff: float = 0.5,
    ) -> None:
        self._nc = nc
        self._owns_connection = False
        self._subject = wire.submit_subject(journal)
        self._request_timeout = request_timeout
        self._max_request_timeout = max(request_timeout, max_request_timeout)
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff

    @classmethod
    async def connect(cls, servers: str, journal: str = "default", **kw: float) -> Client:
        client = cls(await connect(servers, name="jetstandby-client"), journal, **kw)
        client._owns_connection = True
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_connection and not self._nc.is_closed:
            await close_quietly(self._nc)

    async def submit(
        self,
        command_type: str,
        command_version: int,
        payload: bytes,
        *,
        request_id: str | None = None,
        deadline: float = 30.0,
    ) -> SubmitResult:
        """Submit once, exactly once, retrying until ``deadline`` seconds have passed.

        Raises :class:`SubmitError`: at once for a refusal that no retry can fix (bad request,
        unsupported command), with ``code="deadline"`` (retriable) if no primary acknowledged
        it in time.
        """
        request_id = request_id or uuid.uuid4().hex
        body = submission.encode_submission(
            submission.Submission(request_id, command_type, command_version, payload)
        )
        loop = asyncio.get_running_loop()
        give_up = loop.time() + deadline
        backoff, attempts, last = self._min_backoff, 0, "no attempt"
        per_try = self._request_timeout
        while True:
            attempts += 1
            timeout = max(0.001, min(per_try, give_up - loop.time()))
            try:
                reply, last = await self._attempt(body, timeout)
            except TimeoutError:
                reply, last = None, f"no answer within {timeout:.2f}s"
                per_try = min(per_try * 2, self._max_request_timeout)
            if reply is not None and reply.ok:
                return SubmitResult(
                    reply.seq, reply.result, request_id, reply.deduplicated, attempts
                )
            if reply is not None and not reply.retriable:
                raise SubmitError(f"{reply.code}: {reply.error}", code=reply.code)
            if loop.time() + backoff >= give_up:
                raise SubmitError(
                    f"no primary acknowledged request {request_id} within {deadline}s after "
                    f"{attempts} attempts (last: {last}); its outcome is unknown: submit again "
                    "with the same request id",
                    code="deadline",
                    retriable=True,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _attempt(
        self, body: bytes, timeout: float
    ) -> tuple[submission.SubmitReply | None, str]:
        """One try: the reply (if one came) and what happened. Raises :class:`TimeoutError`
        when nobody answered within ``timeout``."""
        try:
            msg = await self._nc.request(self._subject, body, timeout=timeout)
        except nats.errors.NoRespondersError:
            return None, "no primary is serving"
        except nats.errors.TimeoutError:
            raise TimeoutError from None
        except (nats.errors.Error, OSError) as exc:
            return None, f"connection: {exc!r}"
        try:
            reply = submission.decode_reply(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return None, f"unreadable reply: {exc}"
        return reply, f"{reply.code}: {reply.error}"
