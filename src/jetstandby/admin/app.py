"""The aiohttp application: routes and the read-only handlers."""

from __future__ import annotations

from typing import Final

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from jetstandby.admin import operator
from jetstandby.admin.http import JSON, error_middleware, json_response
from jetstandby.admin.openapi import openapi_document
from jetstandby.admin.promote import MAX_BODY_BYTES, promote
from jetstandby.status import NodeControl

_ALIVE: Final = msgspec.json.encode({"status": "alive"})


class _Handlers:
    def __init__(self, control: NodeControl, token: str | None, metrics: Collector) -> None:
        self._control = control
        self._token = token
        self._metrics = metrics
        self._openapi = msgspec.json.encode(openapi_document(auth_required=token is not None))

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(self._control.status()), content_type=JSON)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(body=_ALIVE, content_type=JSON)

    async def readyz(self, request: web.Request) -> web.Response:
        status = self._control.status()
        body = {
            "ready": status.ready,
            "role": status.role,
            "halted": status.halted,
            "caught_up": status.caught_up,
            "last_error": status.last_error,
        }
        return json_response(body, status=200 if status.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type=JSON)

    async def promote(self, request: web.Request) -> web.Response:
        return await promote(request, self._control, self._token)

    async def skip(self, request: web.Request) -> web.Response:
        return await operator.skip(request, self._control, self._token)

    async def snapshot(self, request: web.Request) -> web.Response:
        return await operator.snapshot(request, self._control, self._token)


def build_app(control: NodeControl, token: str | None, metrics: Collector) -> web.Application:
    handlers = _Handlers(control, token, metrics)
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    # allow_head=False: HEAD is not in the OpenAPI document, so it gets the documented 405.
    app.router.add_get("/status", handlers.status, allow_head=False)
    app.router.add_get("/healthz", handlers.healthz, allow_head=False)
    app.router.add_get("/readyz", handlers.readyz, allow_head=False)
    app.router.add_get("/metrics", handlers.metrics, allow_head=False)
    app.router.add_get("/openapi.json", handlers.openapi, allow_head=False)
    app.router.add_post("/admin/promote", handlers.promote)
    app.router.add_post("/admin/skip", handlers.skip)
    app.router.add_post("/admin/snapshot", handlers.snapshot)
    return app
