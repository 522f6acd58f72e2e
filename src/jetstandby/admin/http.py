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
    """``payload`` (anything msgspec encodes) as an ``application/json`` response."""
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type=JSON, headers=headers
    )


def json_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: object
) -> web.Response:
    """An error response: ``{"error": message, **extra}``."""
    return json_response({"error": message, **extra}, status=status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    headers = CIMultiDict(
        (name, value) for name, value in exc.headers.items() if name.lower() not in _BODY_HEADERS
    )
    return json_error(exc.status, exc.reason.lower(), headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn router errors (404, 405, 413, ...) into JSON and anything unexpected into a 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return _from_http_exception(exc)
    except HttpProcessingError as exc:
        # A body aiohttp could not decode (bad chunking, a broken Content-Encoding): the
        # client's fault, reported while the handler reads it.
        status = exc.code if 400 <= exc.code < 500 else 400
        logger.info("admin API: unreadable request body: %s", exc.message)
        return json_error(status, "request body could not be read")
    except Exception:
        logger.exception("admin API: unexpected error handling %s %r", request.method, request.path)
        return json_error(500, "internal server error")
