"""The OpenAPI 3.1 document served at ``GET /openapi.json``.

Body schemas come from the msgspec Structs the handlers encode and decode, so they cannot drift
from what goes over the wire; the rest is written out here. Tests validate every real response
against this document.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from jetstandby.admin.operator import SkipRequest, SnapshotRequest
from jetstandby.admin.promote import MAX_TIMEOUT, PromoteRequest
from jetstandby.snapshots.meta import SnapshotMeta
from jetstandby.status import NodeStatus, PromoteResult, SkipResult

_REF: Final = "#/components/schemas/{name}"
_JSON: Final = "application/json"
_TEXT: Final = "text/plain"

JsonObject = dict[str, Any]


def _ref(name: str) -> JsonObject:
    return {"$ref": _REF.format(name=name)}


def _error_schema(*required: str, **extra: JsonObject) -> JsonObject:
    return {
        "type": "object",
        "required": ["error", *required],
        "properties": {"error": {"type": "string"}, **extra},
    }


def _response(
    description: str, schema: JsonObject, headers: JsonObject | None = None
) -> JsonObject:
    response: JsonObject = {"description": description, "content": {_JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(
    description: str, schema: str = "Error", headers: JsonObject | None = None
) -> JsonObject:
    return _response(description, _ref(schema), headers)


def _schemas() -> JsonObject:
    _, schemas = msgspec.json.schema_components(
        [
            NodeStatus,
            PromoteResult,
            PromoteRequest,
            SkipRequest,
            SkipResult,
            SnapshotRequest,
            SnapshotMeta,
        ],
        ref_template=_REF,
    )
    schemas["SkipRequest"]["properties"]["reason"]["pattern"] = r"\S"
    request = schemas["PromoteRequest"]
    request["description"] = (
        f"All fields optional; an empty body means {{}}. timeout is in seconds, "
        f"0 < timeout <= {MAX_TIMEOUT:g}. force=true needs a reason with a non-blank character."
    )
    # The one rule msgspec cannot express: a forced promotion must say why.
    request["if"] = {"properties": {"force": {"const": True}}, "required": ["force"]}
    request["then"] = {
        "required": ["reason"],
        "properties": {"reason": {"type": "string", "pattern": r"\S"}},
    }
    nullable = {"type": ["string", "null"]}
    schemas["Error"] = _error_schema()
    schemas["BadRequest"] = _error_schema(field=nullable)
    schemas["Refused"] = _error_schema("reason", reason={"type": "string"})
    schemas["Timeout"] = _error_schema("timeout", timeout={"type": "number"})
    schemas["Retriable"] = _error_schema("detail", detail={"type": "string"})
    schemas["Readiness"] = {
        "type": "object",
        "required": ["ready", "role", "halted", "caught_up", "last_error"],
        "properties": {
            "ready": {"type": "boolean"},
            "role": _ref("Role"),
            "halted": {"type": "boolean"},
            "caught_up": {"type": "boolean"},
            "last_error": nullable,
        },
    }
    schemas["Alive"] = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "alive"}},
    }
    return schemas


def _get(summary: str, responses: JsonObject) -> JsonObject:
    return {"get": {"summary": summary, "responses": {**responses, "500": _error(_UNEXPECTED)}}}


_UNEXPECTED: Final = "An unexpected server fault (logged). No request causes this."
_CHALLENGE: Final = {
    "description": "Always `Bearer`, with a realm.",
    "schema": {"type": "string", "pattern": "^Bearer"},
}


def _action(
    summary: str,
    request: str,
    *,
    auth_required: bool,
    ok: JsonObject,
    bad_request: str,
    refused: str,
    more: JsonObject | None = None,
) -> JsonObject:
    """An authenticated POST taking a JSON body: the responses every admin action shares."""
    responses: JsonObject = {"200": ok, "400": _error(bad_request, "BadRequest")}
    if auth_required:
        responses["401"] = _error("No bearer token.", headers={"WWW-Authenticate": _CHALLENGE})
        responses["403"] = _error("The bearer token is wrong.")
    responses["409"] = _error(refused, "Refused")
    responses["413"] = _error("The request body is larger than 64 KiB.")
    responses["500"] = _error(_UNEXPECTED)
    responses["503"] = _error(
        "The node could not do it now: the journal or the snapshot store did not answer or "
        "refused, or the engine failed to snapshot; `detail` says which.",
        "Retriable",
    )
    responses.update(more or {})
    operation: JsonObject = {
        "summary": summary,
        "requestBody": {
            "required": request == "SkipRequest",
            "content": {_JSON: {"schema": _ref(request)}},
        },
        "responses": responses,
        "security": [{"bearerAuth": []}] if auth_required else [],
    }
    return {"post": operation}


def _promote(auth_required: bool) -> JsonObject:
    return _action(
        "Promote this node to primary.",
        "PromoteRequest",
        auth_required=auth_required,
        ok=_response("Promoted (or already primary).", _ref("PromoteResult")),
        bad_request=(
            "Malformed JSON, a non-object body, an unknown field, a wrong type or value, or "
            "force without a reason. `field` names the offending field when there is one."
        ),
        refused="The node refused to promote; `reason` says why.",
        more={
            "504": _error(
                "wait=true and the promotion did not complete within `timeout` seconds. The "
                "promotion may still complete: check GET /status.",
                "Timeout",
            )
        },
    )


def _skip(auth_required: bool) -> JsonObject:
    return _action(
        "Skip the one message a halted replay stopped at, and resume. Logged with the reason.",
        "SkipRequest",
        auth_required=auth_required,
        ok=_response("Skipped; replay resumes after it.", _ref("SkipResult")),
        bad_request=(
            "Malformed JSON, a missing or unknown field, a wrong type or value, or a blank "
            "reason. `field` names the offending field when there is one."
        ),
        refused=(
            "Replay is not halted, halted at another stream seq, or halted on something a "
            "skip cannot repair (divergence, lost history); `reason` says which."
        ),
    )


def _snapshot(auth_required: bool) -> JsonObject:
    return _action(
        "Take a snapshot of this standby's state now and store it in the snapshot bucket.",
        "SnapshotRequest",
        auth_required=auth_required,
        ok=_response("Stored; its metadata.", _ref("SnapshotMeta")),
        bad_request="Malformed JSON, a non-object body, an unknown field or a wrong type.",
        refused=(
            "The node cannot take one now: it is a primary (which never pauses for a "
            "snapshot), it is halted or diverged, or it has not restored its state yet."
        ),
    )


def _paths(auth_required: bool) -> JsonObject:
    return {
        "/status": _get(
            "The node's status document.", {"200": _response("OK", _ref("NodeStatus"))}
        ),
        "/healthz": _get(
            "Liveness: 200 while the process runs.", {"200": _response("Alive", _ref("Alive"))}
        ),
        "/readyz": _get(
            "Readiness.",
            {
                "200": _response("Ready.", _ref("Readiness")),
                "503": _response("Not ready.", _ref("Readiness")),
            },
        ),
        "/metrics": _get(
            "Prometheus text exposition (format 1.0.0).",
            {
                "200": {
                    "description": "Metrics.",
                    "content": {_TEXT: {"schema": {"type": "string"}}},
                }
            },
        ),
        "/openapi.json": _get(
            "This document.",
            {"200": _response("OpenAPI 3.1 document.", {"type": "object"})},
        ),
        "/admin/promote": _promote(auth_required),
        "/admin/skip": _skip(auth_required),
        "/admin/snapshot": _snapshot(auth_required),
    }


_DESCRIPTION: Final = (
    'Admin API of a jetstandby node. Every error response is JSON `{"error": ...}`: '
    "an unknown path gets 404 and a known path with another method gets 405 (with `Allow`), "
    "both with the `Error` schema. On every path, a body that cannot be decoded (a broken "
    "Content-Encoding or chunking) gets 400 and a body over 64 KiB gets 413."
)


def openapi_document(*, auth_required: bool = True) -> JsonObject:
    """The OpenAPI document; ``auth_required=False`` for a server running without a token."""
    components: JsonObject = {
        "schemas": _schemas(),
        "responses": {
            "NotFound": _error("No such path."),
            "MethodNotAllowed": _error("The path exists but not with this method."),
        },
    }
    if auth_required:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "jetstandby admin API", "version": "1", "description": _DESCRIPTION},
        "paths": _paths(auth_required),
        "components": components,
    }
