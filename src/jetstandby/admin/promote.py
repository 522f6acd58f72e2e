"""``POST /admin/promote``: bearer authentication, body validation, and the call itself."""

from __future__ import annotations

import hmac
import logging
import re
from typing import Annotated, Final, TypeVar

import msgspec
from aiohttp import web

from jetstandby.admin.http import json_error, json_response
from jetstandby.errors import ConfigError, JetstandbyError, PromotionRefused
from jetstandby.status import NodeControl

logger = logging.getLogger(__name__)

MAX_TIMEOUT: Final = 300.0
MAX_REASON_LENGTH: Final = 1000
MAX_BODY_BYTES: Final = 64 * 1024

_AT_FIELD: Final = re.compile(r" - at `\$\.?(?P<field>[^`]*)`$")
_UNKNOWN_FIELD: Final = re.compile(
    r"(?:unknown|missing required) field `(?P<field>.*)`$", re.DOTALL
)
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="jetstandby"'}


class PromoteRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    force: bool = False
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_LENGTH)] | None = None
    wait: bool = True
    timeout: Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)] = 10.0


def check_bearer(request: web.Request, token: str | None) -> web.Response | None:
    if token is None:
        return None
    scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        logger.warning(
            "admin API: %s without bearer credentials from %s", request.path, request.remote
        )
        return json_error(401, "bearer token required", headers=_CHALLENGE)
    # Compare bytes: compare_digest refuses non-ASCII str, and headers may carry anything.
    if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), token.encode()):
        logger.warning(
            "admin API: %s with a wrong bearer token from %s", request.path, request.remote
        )
        return json_error(403, "bearer token not accepted")
    return None


T = TypeVar("T", bound=msgspec.Struct)


def parse_body(body: bytes, kind: type[T]) -> T | web.Response:
    """Decode a JSON request body (empty means ``{}``), or a 400 naming the bad field."""
    try:
        return msgspec.json.decode(body.strip() or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        return _invalid(str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return json_error(400, f"request body is not valid JSON: {exc}", field=None)


def parse_promote(body: bytes) -> PromoteRequest | web.Response:
    request = parse_body(body, PromoteRequest)
    if isinstance(request, web.Response):
        return request
    if request.force and not (request.reason or "").strip():
        return json_error(400, "force=true requires a non-empty reason", field="reason")
    return request


def _invalid(message: str) -> web.Response:
    at_field = _AT_FIELD.search(message)
    if at_field is not None:
        return json_error(400, message[: at_field.start()], field=at_field["field"] or None)
    unknown = _UNKNOWN_FIELD.search(message)
    return json_error(400, message, field=unknown["field"] if unknown is not None else None)


async def promote(request: web.Request, control: NodeControl, token: str | None) -> web.Response:
    refusal = check_bearer(request, token)
    if refusal is not None:
        return refusal
    parsed = parse_promote(await request.read())
    if isinstance(parsed, web.Response):
        return parsed
    _log_request(parsed, request.remote)
    return await _call(control, parsed)


async def _call(control: NodeControl, parsed: PromoteRequest) -> web.Response:
    try:
        result = await control.promote(
            force=parsed.force, reason=parsed.reason, wait=parsed.wait, timeout=parsed.timeout
        )
    except PromotionRefused as exc:
        logger.warning("admin API: promotion refused: %s", exc.reason)
        return json_error(409, "promotion refused", reason=exc.reason)
    except ConfigError as exc:  # the node's own check of the arguments
        return json_error(400, exc.problem, field=exc.field)
    except TimeoutError:
        logger.warning("admin API: promotion not complete within %.3f s", parsed.timeout)
        return json_error(504, "promotion did not complete in time", timeout=parsed.timeout)
    except JetstandbyError as exc:
        if not exc.retriable:
            raise  # a bug: the middleware logs it and answers 500
        logger.warning("admin API: promotion failed, retriable: %s", exc)
        return json_error(503, "promotion failed; retry later", detail=str(exc))
    logger.info(
        "admin API: promoted role=%s epoch=%d seq=%d took_ms=%.1f forced=%s",
        result.role,
        result.epoch,
        result.seq,
        result.took_ms,
        result.forced,
    )
    return json_response(result)


def _log_request(parsed: PromoteRequest, remote: str | None) -> None:
    # Forced promotions skip the safety checks, so they are loud; the token is never logged.
    logger.log(
        logging.WARNING if parsed.force else logging.INFO,
        "admin API: %s requested from %s: reason=%r wait=%s timeout=%s",
        "FORCED promotion" if parsed.force else "promotion",
        remote,
        parsed.reason,
        parsed.wait,
        parsed.timeout,
    )
