"""``AdminServer``: the admin HTTP API as an async resource."""

from __future__ import annotations

import errno
import logging
import socket
from enum import Enum
from types import TracebackType
from typing import Final, Self

from aiohttp import web
from prometheus_client import CollectorRegistry

from jetstandby.admin.app import build_app
from jetstandby.admin.metrics import build_exposition
from jetstandby.admin.settings import AdminSettings
from jetstandby.errors import ConfigError
from jetstandby.status import NodeControl

logger = logging.getLogger(__name__)

# How long aclose() lets in-flight requests (a waiting promote) finish before cancelling them.
SHUTDOWN_GRACE: Final = 5.0


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class AdminServer:
    """The admin HTTP API over a :class:`~jetstandby.status.NodeControl`.

    ``GET /status``, ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json`` and
    ``POST /admin/promote`` (bearer token). Metrics live in a per-server registry; a
    ``registry`` passed in is exposed alongside it. Use ``async with`` or :meth:`start` /
    :meth:`aclose`. A server runs once: it cannot be started again after :meth:`aclose`.
    """

    def __init__(
        self,
        control: NodeControl,
        settings: AdminSettings,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._settings = settings
        self._app = build_app(control, settings.token, build_exposition(control, registry))
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._state = _State.NEW

    @property
    def port(self) -> int:
        """The bound port (the chosen one when ``settings.port`` is 0). Only while running."""
        if self._port is None:
            raise RuntimeError("AdminServer is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (IPv6 hosts in brackets)."""
        host = self._settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving.

        Raises :class:`~jetstandby.errors.ConfigError` (``host`` or ``port``) if the address
        cannot be bound, and ``RuntimeError`` if the server was already started or closed.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"AdminServer cannot start: it is {self._state.value}")
        self._state = _State.RUNNING
        self._runner = web.AppRunner(self._app, shutdown_timeout=SHUTDOWN_GRACE)
        try:
            await self._runner.setup()
            await self._bind(self._runner)
        except BaseException:
            await self.aclose()
            raise
        logger.info("admin API listening on %s", self.url)

    async def _bind(self, runner: web.AppRunner) -> None:
        host, port = self._settings.host, self._settings.port
        try:
            await web.TCPSite(runner, host, port).start()
        except socket.gaierror as exc:
            raise ConfigError("host", f"cannot resolve {host!r}: {exc.strerror}") from exc
        except OSError as exc:
            field = "port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
            raise ConfigError(field, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop listening and release the port. Idempotent; in-flight requests get
        ``SHUTDOWN_GRACE`` seconds to finish, then are cancelled."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._port = None
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            logger.info("admin API stopped")

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
