"""jetstandby.faults: the TCP proxy against an echo server and a real nats-server (with a
nats-py client behind it), and the signal helpers against a real child process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from jetstandby.errors import JetstandbyError
from jetstandby.faults import LinkMode, Pauser, TcpProxy, kill9, paused
from jetstandby.server import NatsServer

# -- an echo server upstream -------------------------------------------------------------------


class EchoServer:
    """Echoes every byte; its handler tasks are awaited on close."""

    def __init__(self) -> None:
        self.handlers: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        await asyncio.gather(*self.handlers, return_exceptions=True)


@asynccontextmanager
async def echo_proxy() -> AsyncIterator[TcpProxy]:
    async with EchoServer() as port, TcpProxy("127.0.0.1", port, scheme="tcp") as proxy:
        yield proxy


@asynccontextmanager
async def dial(proxy: TcpProxy) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def test_proxy_forwards_and_counts_bytes_and_connections() -> None:
    async with echo_proxy() as proxy:
        assert proxy.url == f"tcp://127.0.0.1:{proxy.port}"
        async with dial(proxy) as (reader, writer):
            writer.write(b"x" * 100_000)
            assert await reader.readexactly(100_000) == b"x" * 100_000
            stats = proxy.stats()
            assert (stats.accepted, stats.active, stats.upstream_failures) == (1, 1, 0)
            assert stats.bytes_up == stats.bytes_down == 100_000
            assert stats.bytes_dropped == 0 and stats.mode is LinkMode.FORWARD
        # The client's close ends the link; the proxy closes the upstream side too.
        await proxy.wait_for(lambda s: s.active == 0)
        async with dial(proxy) as (reader, writer):
            writer.write(b"again")
            assert await reader.readexactly(5) == b"again"
        assert proxy.stats().accepted == 2


async def test_blackhole_drops_both_ways_and_restore_forwards_on_the_same_connection() -> None:
    async with echo_proxy() as proxy, dial(proxy) as (reader, writer):
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        proxy.blackhole()
        writer.write(b"lost bytes")
        stats = await proxy.wait_for(lambda s: s.bytes_dropped == 10)
        assert stats.active == 1 and stats.bytes_up == 4 and stats.bytes_down == 4
        proxy.restore()
        writer.write(b"back")
        assert await reader.readexactly(4) == b"back"  # nothing of "lost bytes" arrives
        assert proxy.stats().bytes_up == 8


async def test_cut_closes_live_links_refuses_new_ones_until_restore() -> None:
    async with echo_proxy() as proxy:
        async with dial(proxy) as (reader, writer):
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            assert proxy.cut() == 1
            assert await closed_by_peer(reader)
        await proxy.wait_for(lambda s: s.active == 0)
        with pytest.raises(ConnectionRefusedError):  # not listening, but the port is kept
            await asyncio.open_connection("127.0.0.1", proxy.port)
        assert proxy.cut() == 0  # idempotent
        stats = proxy.stats()
        assert (stats.accepted, stats.cut_connections, stats.mode) == (1, 1, LinkMode.CUT)
        proxy.restore()
        async with dial(proxy) as (reader, writer):  # the same port listens again at once
            writer.write(b"ok")
            assert await reader.readexactly(2) == b"ok"
        assert proxy.stats().accepted == 2


async def test_blackhole_after_a_cut_listens_again_and_new_links_hear_nothing() -> None:
    async with echo_proxy() as proxy:
        proxy.cut()
        proxy.blackhole()
        async with dial(proxy) as (reader, writer):
            writer.write(b"abc")
            await proxy.wait_for(lambda s: s.bytes_dropped == 3 and s.active == 1)
            proxy.restore()
            writer.write(b"def")
            assert await reader.readexactly(3) == b"def"


async def test_unreachable_upstream_closes_the_client_and_counts_a_refusal() -> None:
    async with EchoServer() as port:
        pass  # now nothing listens on port
    async with TcpProxy("127.0.0.1", port) as proxy, dial(proxy) as (reader, _):
        assert await closed_by_peer(reader)
        await proxy.wait_for(lambda s: s.upstream_failures == 1 and s.active == 0)


async def test_proxy_runs_once_and_aclose_is_idempotent() -> None:
    proxy = TcpProxy("127.0.0.1", 1)
    with pytest.raises(JetstandbyError):
        _ = proxy.url  # not listening yet
    async with proxy:
        pass
    await proxy.aclose()
    with pytest.raises(JetstandbyError, match="only once"):
        await proxy.start()


# -- a nats-py client through the proxy to a real nats-server ----------------------------------


class Watched:
    """A nats-py connection through the proxy, its connection events as asyncio events."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()
        self.reconnected = asyncio.Event()
        self.errors: list[Exception] = []
        self._error_seen = asyncio.Condition()
        self.nc = NatsClient()

    async def wait_errors(self, count: int, timeout: float = 5) -> list[Exception]:
        async with asyncio.timeout(timeout), self._error_seen:
            await self._error_seen.wait_for(lambda: len(self.errors) >= count)
        return self.errors

    async def connect(self, url: str) -> NatsClient:
        async def on_disconnected() -> None:
            self.disconnected.set()

        async def on_reconnected() -> None:
            self.reconnected.set()

        async def on_error(exc: Exception) -> None:
            async with self._error_seen:
                self.errors.append(exc)
                self._error_seen.notify_all()

        await self.nc.connect(
            url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,  # type: ignore[arg-type]  # typed int, used as float
            connect_timeout=1,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            error_cb=on_error,
        )
        return self.nc


@asynccontextmanager
async def responder_and_client(
    server: NatsServer,
) -> AsyncIterator[tuple[TcpProxy, Watched]]:
    """An ``echo`` responder connected directly, and a watched client through a proxy."""
    assert server.port is not None
    direct = await nats.connect(server.url)

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await direct.subscribe("echo", cb=echo)
    await direct.flush()
    watched = Watched()
    try:
        async with TcpProxy("127.0.0.1", server.port) as proxy:
            await watched.connect(proxy.url)
            try:
                yield proxy, watched
            finally:
                await watched.nc.close()
    finally:
        await direct.close()


async def test_nats_client_through_proxy_cut_then_restore(nats_server: NatsServer) -> None:
    async with responder_and_client(nats_server) as (proxy, watched):
        nc = watched.nc
        assert (await nc.request("echo", b"1", timeout=2)).data == b"1"
        before = proxy.stats()
        assert before.active == 1 and before.bytes_up > 0 and before.bytes_down > 0

        assert proxy.cut() == 1
        await asyncio.wait_for(watched.disconnected.wait(), 5)
        # nats-py reconnects every 0.1 s; the kernel refuses each attempt.
        errors = await watched.wait_errors(3)
        assert all(isinstance(e, ConnectionRefusedError) for e in errors[-2:]), errors
        assert not nc.is_connected and nc.is_reconnecting
        assert not watched.reconnected.is_set()
        assert proxy.stats().accepted == 1

        proxy.restore()
        await asyncio.wait_for(watched.reconnected.wait(), 5)
        assert (await nc.request("echo", b"2", timeout=2)).data == b"2"
        after = proxy.stats()
        assert (after.active, after.accepted, after.cut_connections) == (1, 2, 1)


async def test_nats_client_through_proxy_blackhole_then_restore(nats_server: NatsServer) -> None:
    async with responder_and_client(nats_server) as (proxy, watched):
        nc = watched.nc
        assert (await nc.request("echo", b"1", timeout=2)).data == b"1"

        proxy.blackhole()
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("echo", b"into the void", timeout=0.3)
        stats = proxy.stats()
        # The request went in and was dropped; the TCP connection stayed up throughout.
        assert stats.bytes_dropped > 0 and stats.active == 1 and stats.accepted == 1
        assert nc.is_connected and not watched.disconnected.is_set()

        proxy.restore()
        # nats-py needs nothing re-established: the same connection carries the next request.
        assert (await nc.request("echo", b"2", timeout=2)).data == b"2"
        assert nc.is_connected and not watched.disconnected.is_set()
        assert proxy.stats().accepted == 1


# -- signals -----------------------------------------------------------------------------------


def event_of(proc: subprocess.Popen[bytes], options: int) -> int:
    """Block until the child reports a state change of kind ``options``; its ``si_code``."""
    result = os.waitid(os.P_PID, proc.pid, options)
    assert result is not None
    return result.si_code


def _child() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )


def _reap(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdin is not None
    proc.stdin.close()
    return proc.wait(timeout=10)


def test_pauser_stops_continues_and_always_continues_on_exit() -> None:
    proc = _child()
    try:
        with pytest.raises(RuntimeError), Pauser(proc.pid) as pauser:
            pauser.pause()
            assert event_of(proc, os.WSTOPPED) == os.CLD_STOPPED
            pauser.resume()
            assert event_of(proc, os.WCONTINUED) == os.CLD_CONTINUED
            pauser.pause()
            assert event_of(proc, os.WSTOPPED) == os.CLD_STOPPED
            raise RuntimeError("the test body fails while the process is stopped")
        assert event_of(proc, os.WCONTINUED) == os.CLD_CONTINUED
        with pytest.raises(JetstandbyError, match="closed"):
            pauser.pause()
        with paused(proc.pid):
            assert event_of(proc, os.WSTOPPED) == os.CLD_STOPPED
        assert event_of(proc, os.WCONTINUED) == os.CLD_CONTINUED
    finally:
        assert _reap(proc) == 0  # it ran on and exited normally: it was not left stopped


def test_kill9_kills_even_a_stopped_process_and_tolerates_a_dead_one() -> None:
    proc = _child()
    with paused(proc.pid):
        assert event_of(proc, os.WSTOPPED) == os.CLD_STOPPED
        assert kill9(proc.pid)
        assert event_of(proc, os.WEXITED | os.WNOWAIT) == os.CLD_KILLED
    # The pauser's SIGCONT at exit found a dead (unreaped) process and stayed quiet.
    assert _reap(proc) == -signal.SIGKILL
    assert not kill9(proc.pid)
