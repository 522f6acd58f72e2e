"""jetstandby.server against the real nats-server binary: no mocks, no sleeps to synchronise."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamInfo

from jetstandby.errors import ConfigError, ServerError
from jetstandby.server import NatsCluster, NatsServer, find_nats_server_binary

STREAM = "ORDERS"
SUBJECT = "orders.new"
T = TypeVar("T")


@asynccontextmanager
async def client(servers: str | list[str]) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=-1)
    try:
        yield nc
    finally:
        await nc.close()


async def publish(url: str, count: int, *, create: bool = True) -> list[int]:
    """Create the file-backed stream (if asked) and publish ``m1..m{count}``; return ack seqs."""
    async with client(url) as nc:
        js = nc.jetstream()
        if create:
            await js.add_stream(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE)
        return [(await js.publish(SUBJECT, f"m{i}".encode())).seq for i in range(1, count + 1)]


async def stored(url: str) -> tuple[int, bytes]:
    """Message count of the stream and the payload of its last message."""
    async with client(url) as nc:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        last = await js.get_msg(STREAM, info.state.last_seq)
        return info.state.messages, last.data or b""


RETRIED: tuple[type[Exception], ...] = (AssertionError, nats.errors.Error, TimeoutError)


async def eventually(
    attempt: Callable[[], Awaitable[T]],
    *,
    timeout: float = 20.0,
    retry_on: tuple[type[Exception], ...] = RETRIED,
) -> T:
    """Retry ``attempt`` (which raises one of ``retry_on`` while its condition does not
    hold) until a deadline."""
    delay = 0.05
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await attempt()
            except retry_on:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)


# -- one server ----------------------------------------------------------------------------


async def test_client_creates_a_file_stream_and_gets_a_puback(nats_server: NatsServer) -> None:
    async with client(nats_server.url) as nc:
        js = nc.jetstream()
        await js.add_stream(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE)
        ack = await js.publish(SUBJECT, b"hello")
    assert (ack.stream, ack.seq) == (STREAM, 1)
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.running and nats_server.pid is not None
    # The stream lives in our store directory, so the generated config took effect.
    assert (nats_server.store_dir / "jetstream" / "$G" / "streams" / STREAM).is_dir()


async def test_graceful_restart_keeps_data_url_and_ports(nats_server: NatsServer) -> None:
    url, monitor_url, old_pid = nats_server.url, nats_server.monitor_url, nats_server.pid
    assert await publish(url, 3) == [1, 2, 3]

    await nats_server.restart()

    assert nats_server.returncode == 0  # SIGTERM is a clean shutdown
    assert (nats_server.url, nats_server.monitor_url) == (url, monitor_url)
    assert nats_server.pid not in (None, old_pid)
    assert await stored(url) == (3, b"m3")


async def test_acked_messages_survive_sigkill_without_fsync(nats_server: NatsServer) -> None:
    assert "sync_interval" not in nats_server.config_file.read_text()  # default: lazy fsync
    assert await publish(nats_server.url, 5) == [1, 2, 3, 4, 5]

    await nats_server.stop(kill=True)
    assert not nats_server.running and nats_server.pid is None
    assert nats_server.returncode == -signal.SIGKILL
    await nats_server.start()

    # The page cache outlives the process, so acked writes survive a process crash.
    assert await stored(nats_server.url) == (5, b"m5")


async def test_a_server_killed_behind_our_back_is_reaped_and_restarts(
    nats_server: NatsServer,
) -> None:
    assert await publish(nats_server.url, 1) == [1]
    pid = nats_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    await nats_server.stop()  # reaps it; the SIGTERM finds nothing to stop
    # asyncio's threaded child watcher sometimes loses the race to the exit status and
    # reports 255 ("unknown child"); either way the process is gone and reaped.
    assert nats_server.returncode in (-signal.SIGKILL, 255)
    assert not nats_server.running
    await nats_server.start()
    assert await stored(nats_server.url) == (1, b"m1")


async def test_sync_always_is_written_to_the_config_and_serves() -> None:
    async with NatsServer(sync_always=True) as server:
        assert "sync_interval: always" in server.config_file.read_text()
        assert await publish(server.url, 2) == [1, 2]


async def gomaxprocs(server: NatsServer) -> int:
    with await asyncio.to_thread(urllib.request.urlopen, server.monitor_url + "/varz") as answer:
        return int(json.loads(answer.read())["gomaxprocs"])


async def test_an_embedded_server_runs_go_on_one_thread_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOMAXPROCS", "2")
    async with NatsServer() as server:
        assert await gomaxprocs(server) == 1
    async with NatsServer(go_max_procs=None) as server:  # Go's own: here, the environment's
        assert await gomaxprocs(server) == 2
    async with NatsCluster() as cluster:  # a cluster's nodes keep Go's own unless told
        assert [await gomaxprocs(node) for node in cluster.nodes] == [2, 2, 2]


async def test_a_paused_server_serves_after_resume_and_stops_gracefully(
    nats_server: NatsServer,
) -> None:
    nats_server.pause()
    assert nats_server.paused
    # The kernel accepts the connection, but a frozen server never sends its INFO line...
    reader, writer = await asyncio.open_connection("127.0.0.1", nats_server.port)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.readline()
        nats_server.resume()
        # ...until it is continued.
        assert (await reader.readline()).startswith(b"INFO ")
    finally:
        writer.close()
        await writer.wait_closed()
    assert not nats_server.paused
    assert await publish(nats_server.url, 1) == [1]

    nats_server.pause()
    await nats_server.stop(timeout=5)
    assert nats_server.returncode == 0  # SIGTERM took effect because stop() continued it


async def test_taken_port_fails_fast_naming_the_port() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = NatsServer(port=port)
        started = time.monotonic()
        try:
            with pytest.raises(ServerError) as caught:
                await server.start()
            elapsed = time.monotonic() - started
            assert not server.running and server.port == port  # an explicit port is kept
        finally:
            await server.aclose()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "address already in use" in message
    assert elapsed < 5


async def test_aclose_is_idempotent_and_removes_the_owned_store() -> None:
    server = NatsServer()
    await server.stop()  # never started: a no-op
    await server.start()
    store = server.store_dir
    assert server.config_file.is_file() and server.log_file.is_file()

    await server.stop()
    await server.stop()
    assert server.returncode == 0 and not server.running
    await server.aclose()
    await server.aclose()

    assert not store.exists()
    with pytest.raises(ServerError, match="closed"):
        await server.start()


async def test_a_given_store_dir_is_kept_after_close(tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with NatsServer(store_dir=store, name="keeper") as server:
        await publish(server.url, 1)
    assert (store / "jetstream" / "$G" / "streams" / STREAM).is_dir()
    assert "keeper" in (store / "nats-server.log").read_text()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 70000}, "port"),
        ({"http_port": 0}, "http_port"),
        ({"name": "has space"}, "name"),
        ({"routes": ["nats-route://127.0.0.1:1"]}, "cluster_name"),
        ({"cluster_name": "c"}, "routes"),
        ({"go_max_procs": 0}, "go_max_procs"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        NatsServer(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_cluster_of_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="size"):
        NatsCluster(size=1)


def test_the_binary_is_the_one_beside_the_interpreter() -> None:
    binary = find_nats_server_binary()
    assert binary == Path(sys.executable).parent / "nats-server"


# -- a cluster -----------------------------------------------------------------------------
# Killing a stream *leader* costs a Raft election (observed 4-9 s with nats-server 2.15.1),
# so that test is marked slow; losing a follower keeps the default run quick.


async def create_replicated_stream(cluster: NatsCluster) -> str:
    """Create the R3 stream right after start, publish ``m1``; once every replica is
    current, return the stream leader."""
    async with client(cluster.urls) as nc:
        js = nc.jetstream()
        await js.add_stream(
            name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE, num_replicas=3
        )
        assert (await js.publish(SUBJECT, b"m1")).seq == 1
        names = {node.name for node in cluster.nodes}
        info = await eventually(lambda: all_replicas_current(nc, names))
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


async def publish_while_unstored(js: JetStreamContext, payload: bytes) -> PubAck:
    """Publish ``payload``, retrying only "no responders".

    That answer means no server held the stream's leadership at that instant (an election,
    which a loaded machine can set off in a young group), so nothing was stored and a retry
    cannot duplicate. A timeout is not retried: the message may have been stored.
    """
    return await eventually(
        lambda: js.publish(SUBJECT, payload, timeout=5),
        retry_on=(nats.js.errors.NoStreamResponseError,),
    )


async def all_replicas_current(nc: NatsClient, names: set[str]) -> StreamInfo:
    info = await nc.jetstream().stream_info(STREAM)
    assert info.cluster is not None and info.cluster.leader is not None
    replicas = info.cluster.replicas or []
    assert {info.cluster.leader, *(peer.name for peer in replicas)} == names
    assert all(peer.current and not peer.offline for peer in replicas), replicas
    return info


async def restart_and_await_rejoin(cluster: NatsCluster, node: NatsServer) -> StreamInfo:
    await node.start()
    async with client(node.url) as nc:  # through the restarted node itself
        names = {peer.name for peer in cluster.nodes}
        return await eventually(lambda: all_replicas_current(nc, names))


async def test_a_cluster_is_ready_only_once_its_leader_sees_every_node() -> None:
    # /healthz of each node that runs is not enough: the third has never run, so the leader
    # could not place an R3 stream, and the cluster must not count as started.
    cluster = NatsCluster()
    first, second, third = cluster.nodes
    try:
        await asyncio.gather(first.start(), second.start())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cluster._wait_for_peers(), 1.0)
        await third.start()
        await asyncio.wait_for(cluster._wait_for_peers(), 15)
    finally:
        await cluster.aclose()


async def test_cluster_acks_without_a_follower_which_then_rejoins(
    nats_cluster: NatsCluster,
) -> None:
    nodes = nats_cluster.nodes
    assert len({node.name for node in nodes}) == 3
    assert nats_cluster.url == ",".join(nats_cluster.urls)
    leader_name = await create_replicated_stream(nats_cluster)
    follower = next(node for node in nodes if node.name != leader_name)

    await follower.stop(kill=True)
    assert follower.returncode == -signal.SIGKILL

    survivors = [node.url for node in nodes if node is not follower]
    async with client(survivors) as nc:
        # The leader and the other follower are a quorum: acked without the follower.
        assert (await publish_while_unstored(nc.jetstream(), b"m2")).seq == 2

    info = await restart_and_await_rejoin(nats_cluster, follower)
    assert (info.state.messages, info.state.last_seq) == (2, 2)


@pytest.mark.slow
async def test_cluster_survives_losing_the_stream_leader_which_then_rejoins(
    nats_cluster: NatsCluster,
) -> None:
    leader_name = await create_replicated_stream(nats_cluster)
    leader = next(node for node in nats_cluster.nodes if node.name == leader_name)
    survivors = [node for node in nats_cluster.nodes if node is not leader]

    await leader.stop(kill=True)

    async with client([node.url for node in survivors]) as nc:
        js = nc.jetstream()
        # No responders until the survivors elect a new leader.
        assert (await publish_while_unstored(js, b"m2")).seq == 2
        info = await js.stream_info(STREAM)
    assert info.cluster is not None
    assert info.cluster.leader in {node.name for node in survivors}

    info = await restart_and_await_rejoin(nats_cluster, leader)
    assert (info.state.messages, info.state.last_seq) == (2, 2)
