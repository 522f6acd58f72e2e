"""Fault tools for the fault-injection suite: a TCP proxy that cuts or black-holes a link,
SIGSTOP/SIGCONT with a guaranteed SIGCONT, and SIGKILL.

:class:`TcpProxy` sits between clients and one upstream (a nats-server), on loopback:

- ``cut()`` closes every live connection at once (both sides see the close) and stops
  listening until ``restore()``: new connections are refused by the kernel
  (``ECONNREFUSED``), so clients' reconnect attempts fail fast and never get half-way. The
  port stays reserved (bound, not listening), so ``restore()`` listens on the same port.
- ``blackhole()`` keeps every connection open but discards all bytes, both ways, until
  ``restore()``: clients see a hang (timeouts), not a reset. Discarded bytes are gone, as if
  a middlebox dropped them *after* TCP acknowledged them; traffic after ``restore()`` flows
  again on the same connections. New connections during a black hole are accepted and
  connected upstream, and hear nothing.
- ``restore()`` returns to forwarding (and listening).

Signals go through a pidfd where the platform has one, so they cannot reach an unrelated
process that reused the pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum
from types import TracebackType
from typing import Final, Self

from jetstandby.errors import JetstandbyError

__all__ = ["LinkMode", "Pauser", "ProxyStats", "TcpProxy", "kill9", "paused"]

logger = logging.getLogger(__name__)

PROXY_HOST: Final = "127.0.0.1"
LISTEN_BACKLOG: Final = 128
READ_CHUNK: Final = 64 * 1024
DEFAULT_WAIT_TIMEOUT: Final = 10.0


class LinkMode(StrEnum):
    """What the proxy does with traffic."""

    FORWARD = "forward"
    CUT = "cut"
    BLACKHOLE = "blackhole"


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters since the proxy started. ``bytes_up`` is client -> upstream, ``bytes_down``
    upstream -> client (forwarded only); ``bytes_dropped`` were discarded in a black hole.
    ``accepted`` counts client connections the proxy accepted (refusals while cut happen in
    the kernel and are not seen); ``upstream_failures`` those closed at once because the
    upstream refused; ``cut_connections`` those closed by :meth:`TcpProxy.cut`."""

    mode: LinkMode
    accepted: int
    active: int
    upstream_failures: int
    cut_connections: int
    bytes_up: int
    bytes_down: int
    bytes_dropped: int


class _Link:
    """One proxied connection: the client's side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


def _listen(port: int) -> socket.socket:
    """A listening socket on ``PROXY_HOST:port``. ``SO_REUSEADDR`` lets it bind beside a
    reserved (bound, not listening) socket of the same port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((PROXY_HOST, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TcpProxy:
    """An asyncio TCP proxy on ``127.0.0.1`` (a free port unless ``port`` is given) in front of
    ``upstream_host:upstream_port``. See the module docstring for ``cut``/``blackhole``.

    ``async with TcpProxy(...) as proxy`` starts it: once :meth:`start` returns, the socket is
    listening. Every task lives in a TaskGroup the proxy owns; an unexpected error in one ends
    the proxy and is raised by :meth:`aclose` (idempotent: stops listening, closes every
    connection, releases the port). A proxy runs once; it cannot be started again after
    ``aclose``. ``url`` is ``<scheme>://127.0.0.1:<port>``.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, port: int = 0, scheme: str = "nats"
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.scheme = scheme
        self._requested_port = port
        self._port: int | None = None
        self._state = _State.NEW
        self._mode = LinkMode.FORWARD
        # Our own fd of the listening (or, while cut, reserved) socket; asyncio serves a dup.
        self._listener: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[Callable[[ProxyStats], bool], asyncio.Future[ProxyStats]]] = []
        self._accepted = self._upstream_failures = self._cut = 0
        self._up = self._down = self._dropped = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen. Raises :class:`JetstandbyError` if already started, OSError if the port is
        taken."""
        if self._state is not _State.NEW:
            raise JetstandbyError(f"proxy is {self._state.value}; it runs only once")
        self._state = _State.RUNNING
        ready = asyncio.Event()
        self._runner = asyncio.get_running_loop().create_task(self._run(ready))
        await ready.wait()
        try:
            self._listener = _listen(self._requested_port)
            self._port = int(self._listener.getsockname()[1])
            await self._serve(self._listener)
        except BaseException:
            await self.aclose()
            raise
        logger.debug("proxy %s -> %s:%d listening", self.url, *self.upstream)

    async def aclose(self) -> None:
        """Stop listening, close every connection, end every task. Idempotent; raises the
        first unexpected error a connection task hit, if any."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._stop_serving()
        if self._listener is not None:
            self._listener.close()
        for link in list(self._links):
            link.abort()
        self._closing.set()
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(JetstandbyError("proxy closed"))
        if self._runner is not None:
            await self._runner

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- what tests see ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise JetstandbyError("proxy is not listening yet")
        return self._port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{PROXY_HOST}:{self.port}"

    @property
    def mode(self) -> LinkMode:
        return self._mode

    def stats(self) -> ProxyStats:
        return ProxyStats(
            mode=self._mode,
            accepted=self._accepted,
            active=len(self._links),
            upstream_failures=self._upstream_failures,
            cut_connections=self._cut,
            bytes_up=self._up,
            bytes_down=self._down,
            bytes_dropped=self._dropped,
        )

    async def wait_for(
        self, predicate: Callable[[ProxyStats], bool], timeout: float = DEFAULT_WAIT_TIMEOUT
    ) -> ProxyStats:
        """Wait until ``predicate(stats)`` holds (checked on every counter change); no polling.
        Raises TimeoutError after ``timeout`` seconds, JetstandbyError if the proxy closes."""
        stats = self.stats()
        if predicate(stats):
            return stats
        future: asyncio.Future[ProxyStats] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiters.remove(entry)

    # -- controls -----------------------------------------------------------------------------

    def cut(self) -> int:
        """Close every live connection now and refuse new ones until :meth:`restore`.
        Returns how many connections were closed. Idempotent."""
        self._check_running()
        if self._mode is not LinkMode.CUT:
            self._mode = LinkMode.CUT
            self._stop_serving()
            assert self._listener is not None
            # Stops listening but keeps the port bound: nothing else can take it meanwhile.
            self._listener.shutdown(socket.SHUT_RD)
        links = list(self._links)
        for link in links:
            link.abort()
        self._cut += len(links)
        logger.info("proxy %s cut: closed %d connections", self.url, len(links))
        self._changed()
        return len(links)

    def blackhole(self) -> None:
        """Keep connections open but discard every byte both ways until :meth:`restore`.
        From a cut, the proxy listens again (new connections hear nothing)."""
        self._check_running()
        self._relisten()
        self._mode = LinkMode.BLACKHOLE
        logger.info("proxy %s black-holed", self.url)
        self._changed()

    def restore(self) -> None:
        """Forward traffic again; after a cut, listen again on the same port at once (clients
        that connect before the accept loop resumes wait in the backlog)."""
        self._check_running()
        self._relisten()
        self._mode = LinkMode.FORWARD
        logger.info("proxy %s restored", self.url)
        self._changed()

    # -- internals ----------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is not _State.RUNNING:
            raise JetstandbyError(f"proxy is {self._state.value}")

    def _relisten(self) -> None:
        if self._mode is not LinkMode.CUT:
            return
        reserved, self._listener = self._listener, _listen(self.port)
        if reserved is not None:
            reserved.close()
        assert self._group is not None
        self._group.create_task(self._serve(self._listener))

    async def _serve(self, listener: socket.socket) -> None:
        if listener is not self._listener or self._state is not _State.RUNNING:
            return  # cut (or closed) again before this task ran
        # start_serving=False: nothing in here suspends, so no cut() can slip in before
        # self._server is set.
        server = await asyncio.start_server(self._accept, sock=listener.dup(), start_serving=False)
        self._server = server
        await server.start_serving()

    def _stop_serving(self) -> None:
        if self._server is not None:
            self._server.close()  # stops accepting and closes asyncio's dup at once
            self._server = None

    async def _run(self, ready: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                ready.set()
                await self._closing.wait()
                for task in self._tasks:
                    task.cancel()
        finally:
            self._group = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the connection's task belongs to our TaskGroup.
        self._accepted += 1
        if self._group is None or self._state is not _State.RUNNING:
            writer.transport.abort()
            self._changed()
            return
        link = _Link(writer)
        self._links.add(link)
        task = self._group.create_task(self._link(link, reader))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._changed()

    async def _link(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        try:
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                logger.info("proxy %s: upstream %s:%d refused: %s", self.url, *self.upstream, exc)
                self._upstream_failures += 1
                return
            if self._mode is LinkMode.CUT:  # cut while we were connecting
                return
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._pump(client_reader, link.upstream, link, up=True))
                pumps.create_task(self._pump(up_reader, link.client, link, up=False))
        finally:
            link.abort()
            self._links.discard(link)
            self._changed()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        *,
        up: bool,
    ) -> None:
        """Copy one direction until EOF or a reset; then close the whole link."""
        try:
            while data := await reader.read(READ_CHUNK):
                if self._mode is not LinkMode.FORWARD:
                    self._dropped += len(data)
                elif up:
                    writer.write(data)
                    self._up += len(data)
                else:
                    writer.write(data)
                    self._down += len(data)
                self._changed()
                await writer.drain()
        except OSError:
            pass  # a reset or an abort is how links end
        finally:
            link.abort()

    def _changed(self) -> None:
        if not self._waiters:
            return
        stats = self.stats()
        for predicate, future in self._waiters:
            if not future.done() and predicate(stats):
                future.set_result(stats)


# -- signals -----------------------------------------------------------------------------------


def _send(pidfd: int | None, pid: int, signum: signal.Signals) -> None:
    if pidfd is not None:
        signal.pidfd_send_signal(pidfd, signum)
    else:
        os.kill(pid, signum)


def _open_pidfd(pid: int) -> int | None:
    if not hasattr(os, "pidfd_open"):
        return None
    return os.pidfd_open(pid)


def kill9(pid: int) -> bool:
    """SIGKILL ``pid`` (a stopped process dies too). False if it was already gone."""
    try:
        pidfd = _open_pidfd(pid)
    except ProcessLookupError:
        return False
    try:
        _send(pidfd, pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return True


class Pauser:
    """SIGSTOP/SIGCONT one process, with a SIGCONT guaranteed when the ``with`` block ends.

    ``pause()`` and ``resume()`` may alternate any number of times inside the block. On exit
    (exception or not) a paused process is continued; one that has died meanwhile is left
    alone. Building one for a pid that is gone, or ``pause()`` of a process that has gone,
    raises ProcessLookupError.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pidfd = _open_pidfd(pid)
        self._paused = False
        self._closed = False

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        if self._closed:
            raise JetstandbyError(f"pauser for pid {self.pid} is closed")
        _send(self._pidfd, self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT if paused; a no-op otherwise, or if the process is gone."""
        if self._paused:
            self._paused = False
            with contextlib.suppress(ProcessLookupError):
                _send(self._pidfd, self.pid, signal.SIGCONT)

    def close(self) -> None:
        """Resume if paused and release the pidfd. Idempotent."""
        self._closed = True
        try:
            self.resume()
        finally:
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def paused(pid: int) -> Iterator[Pauser]:
    """SIGSTOP ``pid`` for the duration of the block; SIGCONT when it ends, whatever happens."""
    with Pauser(pid) as pauser:
        pauser.pause()
        yield pauser
