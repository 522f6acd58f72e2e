"""``POST /admin/skip`` and ``POST /admin/snapshot``: operator actions beside promotion.

Both need the bearer token, as promotion does, and both are logged with their reason.
"""

from __future__ import annotations

import logging
from typing import Annotated, TypeVar

import msgspec
from aiohttp import web

from jetstandby.admin.http import json_error, json_response
from jetstandby.admin.promote import MAX_REASON_LENGTH, check_bearer, parse_body
from jetstandby.errors import ActionRefused, ConfigError, JetstandbyError, SnapshotError
from jetstandby.status import NodeControl

logger = logging.getLogger(__name__)


class SkipRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    stream_seq: Annotated[int, msgspec.Meta(ge=1)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON_LENGTH)]


T = TypeVar("T", bound=msgspec.Struct)


async def _authorized(request: web.Request, token: str | None, kind: type[T]) -> T | web.Response:
    """The request's body as ``kind`` once the bearer token checks out; else the answer."""
    refusal = check_bearer(request, token)
    if refusal is not None:
        return refusal
    return parse_body(await request.read(), kind)


async def skip(request: web.Request, control: NodeControl, token: str | None) -> web.Response:
    parsed = await _authorized(request, token, SkipRequest)
    if isinstance(parsed, web.Response):
        return parsed
    if not parsed.reason.strip():
        return json_error(400, "a skip needs a non-blank reason", field="reason")
    logger.warning(
        "admin API: skip of stream seq %d requested from %s: reason=%r",
        parsed.stream_seq,
        request.remote,
        parsed.reason,
    )
    try:
        result = await control.skip(stream_seq=parsed.stream_seq, reason=parsed.reason)
    except JetstandbyError as exc:
        return _refused("skip", exc)
    return json_response(result)


class SnapshotRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_LENGTH)] | None = None


async def snapshot(request: web.Request, control: NodeControl, token: str | None) -> web.Response:
    parsed = await _authorized(request, token, SnapshotRequest)
    if isinstance(parsed, web.Response):
        return parsed
    logger.info("admin API: snapshot requested from %s: reason=%r", request.remote, parsed.reason)
    try:
        meta = await control.take_snapshot(reason=parsed.reason)
    except JetstandbyError as exc:
        return _refused("snapshot", exc)
    return json_response(meta)


def _refused(action: str, exc: JetstandbyError) -> web.Response:
    if isinstance(exc, ActionRefused):
        logger.warning("admin API: %s refused: %s", action, exc.reason)
        return json_error(409, f"{action} refused", reason=exc.reason)
    if isinstance(exc, ConfigError):
        return json_error(400, exc.problem, field=exc.field)
    if not exc.retriable and not isinstance(exc, SnapshotError):
        raise exc  # a bug: the middleware logs it and answers 500
    logger.warning("admin API: %s failed: %s", action, exc)
    return json_error(503, f"{action} failed; retry later", detail=str(exc))
