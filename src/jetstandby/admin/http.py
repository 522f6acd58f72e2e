"""JSON responses and the middleware that keeps every error response JSON."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

logger = logging.getLogger(__name__)

JSON: Final = "application/json"
# Headers an aiohttp HTTPException carries that describe its own (plain-text) body.
_BODY_HEADERS: Final = frozenset({"content-type", "content-length"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    payload: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type=JSON, headers=headers
    )


def json_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: object
) -> web.Response:
    return json_response({"error": message, **extra}, status=status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    headers = CIMultiDict(
        (name, value) for name, value in exc.headers.items() if name.lower() not in _BODY_HEADERS
    )
    return json_error(exc.status, exc.reason.lower(), headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Router errors (404, 405, 413, ...) become JSON and anything unexpected a logged 500.
    # Every body is read up front (bounded by the app's client_max_size), so a body that cannot
    # be decoded is a 400 on any path and aiohttp never meets its error again while draining
    # it after the response (which it would log as an unhandled exception).
    try:
        await request.read()
        return await handler(request)
    except web.HTTPException as exc:
        return _from_http_exception(exc)
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # Bad chunking or a broken Content-Encoding: the client's fault. Ending the body here
        # keeps aiohttp from draining it (and meeting the error again) after the response.
        logger.info("admin API: unreadable request body: %s", exc)
        request.content.feed_eof()
        response = json_error(400, "request body could not be read")
        response.force_close()
        return response
    except Exception:
        logger.exception("admin API: unexpected error handling %s %r", request.method, request.path)
        return json_error(500, "internal server error")
