"""The admin HTTP API, over real HTTP on a free port, driven through a fake NodeControl."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup, ServerError
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jetstandby.admin import AdminServer, AdminSettings, load_token
from jetstandby.errors import (
    ActionRefused,
    ConfigError,
    FencedError,
    JournalUnavailable,
    PromotionRefused,
    SnapshotError,
)
from jetstandby.snapshots import SnapshotMeta
from jetstandby.status import NodeStatus, PromoteResult, Role, SkipResult, Transition

TOKEN: Final = "s3cret-Admin_token.42~"
AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}
RESULT: Final = PromoteResult(role=Role.PRIMARY, epoch=8, seq=1234, took_ms=12.5, forced=True)
SKIPPED: Final = SkipResult(
    stream_seq=9, seq=9, reason="poison", halted_on="bad version", at_unix_ms=1_700_000_000_000
)
SNAPSHOT: Final = SnapshotMeta(
    journal="orders",
    stream="JSB_ORDERS",
    engine_name="orderbook",
    engine_version=3,
    seq=1500,
    stream_seq=1502,
    epoch=7,
    digest="ab" * 32,
    sha256="cd" * 32,
    size=4096,
    node_id="node-b",
    taken_at_unix_ms=1_700_000_000_000,
)


def make_status(**changes: Any) -> NodeStatus:
    status = NodeStatus(
        node_id="node-b",
        role=Role.STANDBY,
        epoch=7,
        journal="orders",
        engine_name="orderbook",
        engine_version=3,
        ready=True,
        halted=False,
        commands_replayed=1500,
        caught_up=True,
        replay_cursor_seq=1502,
        last_replayed_seq=1500,
        last_replay_unix_ms=1_700_000_000_123,
        latest_stream_seq=1510,
        stream_lag=8,
        lag_ms=250.0,
        apply_rate=1234.5,
        catch_up_eta_s=0.5,
        duplicates_skipped=2,
        resubscribes=1,
        last_error=None,
        submissions_acknowledged=11,
        submissions_rejected=3,
        submissions_overloaded=2,
        submissions_deduplicated=4,
        transitions=[Transition(None, Role.STANDBY, 1_700_000_000_000, "boot")],
        stream_first_seq=900,
        retention_headroom=603,
        retention_warning=True,
        last_checkpoint_seq=1000,
        writer_engine_version=3,
        snapshots_taken=2,
        last_snapshot_seq=1400,
    )
    return msgspec.structs.replace(status, **changes)


class PromoteCall(msgspec.Struct, frozen=True, kw_only=True):
    force: bool
    reason: str | None
    wait: bool
    timeout: float


class FakeControl:
    """A NodeControl whose status is a plain attribute and whose promote is scripted."""

    def __init__(self, status: NodeStatus | None = None) -> None:
        self.current = status or make_status()
        self.calls: list[PromoteCall] = []
        self.refuse: str | None = None
        self.fail: Exception | None = None  # raised by promote, if set
        self.gate: asyncio.Event | None = None  # promote waits for it (with its timeout)
        self.skips: list[tuple[int, str]] = []
        self.snapshots: list[str | None] = []

    def status(self) -> NodeStatus:
        return self.current

    async def promote(
        self, *, force: bool, reason: str | None, wait: bool, timeout: float
    ) -> PromoteResult:
        self.calls.append(PromoteCall(force=force, reason=reason, wait=wait, timeout=timeout))
        if self.refuse is not None:
            raise PromotionRefused(self.refuse)
        if self.fail is not None:
            raise self.fail
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), timeout)
        return RESULT

    async def skip(self, *, stream_seq: int, reason: str) -> SkipResult:
        self.skips.append((stream_seq, reason))
        if self.refuse is not None:
            raise ActionRefused(self.refuse)
        return SKIPPED

    async def take_snapshot(self, *, reason: str | None) -> SnapshotMeta:
        self.snapshots.append(reason)
        if self.refuse is not None:
            raise ActionRefused(self.refuse)
        if self.fail is not None:
            raise self.fail
        return SNAPSHOT


class RotatingControl(FakeControl):
    """Flips readiness on every status() and answers promotions with success, refusal and
    timeout in turn, so fuzzing sees every documented response."""

    def status(self) -> NodeStatus:
        self.current = make_status(ready=not self.current.ready)
        return self.current

    async def promote(
        self, *, force: bool, reason: str | None, wait: bool, timeout: float
    ) -> PromoteResult:
        self.calls.append(PromoteCall(force=force, reason=reason, wait=wait, timeout=timeout))
        outcome = len(self.calls) % 3
        if outcome == 1:
            raise PromotionRefused("standby is 8 commands behind")
        if outcome == 2:
            raise TimeoutError
        return RESULT

    async def skip(self, *, stream_seq: int, reason: str) -> SkipResult:
        self.skips.append((stream_seq, reason))
        if len(self.skips) % 2:
            raise ActionRefused("replay is not halted")
        return SKIPPED

    async def take_snapshot(self, *, reason: str | None) -> SnapshotMeta:
        self.snapshots.append(reason)
        if len(self.snapshots) % 3 == 1:
            raise ActionRefused("this node is the primary")
        if len(self.snapshots) % 3 == 2:
            raise JournalUnavailable("the bucket did not answer")
        return SNAPSHOT


class BrokenControl(FakeControl):
    """A node whose promote fails unexpectedly: the server must answer 500, and fuzzing notice."""

    async def promote(
        self, *, force: bool, reason: str | None, wait: bool, timeout: float
    ) -> PromoteResult:
        raise RuntimeError("node exploded")


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
async def server(control: FakeControl) -> AsyncIterator[AdminServer]:
    async with AdminServer(control, AdminSettings(token=TOKEN)) as server:
        yield server


@pytest.fixture
async def client(server: AdminServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=server.url) as session:
        yield session


async def get_json(client: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with client.get(path) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def post_promote(
    client: aiohttp.ClientSession,
    body: bytes | dict[str, Any] = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    data = msgspec.json.encode(body) if isinstance(body, dict) else body
    async with client.post("/admin/promote", data=data, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json(), response


# --- read-only endpoints -------------------------------------------------------------------


async def test_status_round_trips_every_field(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    async with client.get("/status") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert msgspec.json.decode(await response.read(), type=NodeStatus) == control.current


async def test_healthz_is_alive_even_when_halted(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    control.current = make_status(ready=False, halted=True, last_error="gap at 17")
    assert await get_json(client, "/healthz") == (200, {"status": "alive"})


async def test_readyz_follows_status_ready(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    status, body = await get_json(client, "/readyz")
    assert status == 200
    assert body == {
        "ready": True,
        "role": "standby",
        "halted": False,
        "caught_up": True,
        "last_error": None,
    }
    control.current = make_status(ready=False, halted=True, caught_up=False, last_error="gap")
    status, body = await get_json(client, "/readyz")
    assert status == 503
    assert body["halted"] is True
    assert body["caught_up"] is False
    assert body["last_error"] == "gap"


async def scrape(client: aiohttp.ClientSession) -> dict[str, float]:
    """``{"name{label=value,...}": value}`` for every sample of ``GET /metrics``."""
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_metrics_expose_status_with_prometheus_names(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    samples = await scrape(client)
    info = "jetstandby_node_info{engine=orderbook,engine_version=3,journal=orders,node_id=node-b}"
    expected = {
        info: 1.0,
        "jetstandby_role{role=standby}": 1.0,
        "jetstandby_role{role=promoting}": 0.0,
        "jetstandby_role{role=primary}": 0.0,
        "jetstandby_role{role=fenced}": 0.0,
        "jetstandby_epoch{}": 7.0,
        "jetstandby_ready{}": 1.0,
        "jetstandby_caught_up{}": 1.0,
        "jetstandby_halted{}": 0.0,
        "jetstandby_commands_replayed_total{}": 1500.0,
        "jetstandby_stream_lag_commands{}": 8.0,
        "jetstandby_lag_seconds{}": 0.25,
        "jetstandby_apply_rate_commands_per_second{}": 1234.5,
        "jetstandby_latest_stream_seq{}": 1510.0,
        "jetstandby_replay_cursor_seq{}": 1502.0,
        "jetstandby_last_replayed_seq{}": 1500.0,
        "jetstandby_last_replay_timestamp_seconds{}": 1_700_000_000.123,
        "jetstandby_catch_up_eta_seconds{}": 0.5,
        "jetstandby_duplicates_skipped_total{}": 2.0,
        "jetstandby_resubscribes_total{}": 1.0,
        "jetstandby_submissions_acknowledged_total{}": 11.0,
        "jetstandby_submissions_rejected_total{}": 3.0,
        "jetstandby_submissions_overloaded_total{}": 2.0,
        "jetstandby_submissions_deduplicated_total{}": 4.0,
        "jetstandby_stream_first_seq{}": 900.0,
        "jetstandby_retention_headroom_commands{}": 603.0,
        "jetstandby_retention_warning{}": 1.0,
        "jetstandby_diverged{}": 0.0,
        "jetstandby_last_checkpoint_seq{}": 1000.0,
        "jetstandby_writer_engine_version{}": 3.0,
        "jetstandby_snapshots_taken_total{}": 2.0,
        "jetstandby_last_snapshot_seq{}": 1400.0,
    }
    assert {name: samples.get(name) for name in expected} == expected
    assert all(name.startswith("jetstandby_") for name in samples)

    control.current = make_status(role=Role.PRIMARY, epoch=8)
    samples = await scrape(client)
    assert samples["jetstandby_role{role=primary}"] == 1.0
    assert samples["jetstandby_role{role=standby}"] == 0.0
    assert samples["jetstandby_epoch{}"] == 8.0


async def test_metrics_omit_unknown_values(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    unknown = ("replay_cursor_seq", "last_replayed_seq", "latest_stream_seq", "stream_lag")
    control.current = make_status(
        **dict.fromkeys(unknown), last_replay_unix_ms=None, catch_up_eta_s=None
    )
    names = {name.partition("{")[0] for name in await scrape(client)}
    omitted = {
        "jetstandby_replay_cursor_seq",
        "jetstandby_last_replayed_seq",
        "jetstandby_latest_stream_seq",
        "jetstandby_stream_lag_commands",
        "jetstandby_last_replay_timestamp_seconds",
        "jetstandby_catch_up_eta_seconds",
    }
    assert not names & omitted
    assert {"jetstandby_epoch", "jetstandby_lag_seconds"} <= names


async def test_metrics_include_a_caller_registry(control: FakeControl) -> None:
    registry = CollectorRegistry()
    Counter("jetstandby_widgets", "Widgets made.", registry=registry).inc(3)
    settings = AdminSettings(token=TOKEN)
    async with (
        AdminServer(control, settings, registry=registry) as server,
        aiohttp.ClientSession(base_url=server.url) as client,
    ):
        samples = await scrape(client)
    assert samples["jetstandby_widgets_total{}"] == 3.0
    assert samples["jetstandby_epoch{}"] == 7.0


async def test_openapi_document_describes_every_endpoint(client: aiohttp.ClientSession) -> None:
    status, document = await get_json(client, "/openapi.json")
    assert status == 200
    assert document["openapi"] == "3.1.0"
    assert {path: set(ops) for path, ops in document["paths"].items()} == {
        "/status": {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
        "/openapi.json": {"get"},
        "/admin/promote": {"post"},
        "/admin/skip": {"post"},
        "/admin/snapshot": {"post"},
    }
    promote = document["paths"]["/admin/promote"]["post"]
    assert {"200", "400", "401", "403", "409", "413", "503", "504"} <= promote["responses"].keys()
    assert promote["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert {"200", "503"} <= document["paths"]["/readyz"]["get"]["responses"].keys()


async def test_unknown_path_and_wrong_method_are_json(client: aiohttp.ClientSession) -> None:
    status, body = await get_json(client, "/nope")
    assert (status, body) == (404, {"error": "not found"})
    async with client.put("/status") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        assert await response.json() == {"error": "method not allowed"}
    async with client.get("/admin/promote") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"


async def test_unexpected_failure_is_a_logged_json_500(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        AdminServer(BrokenControl(), AdminSettings(token=TOKEN)) as server,
        aiohttp.ClientSession(base_url=server.url) as client,
    ):
        status, body, _ = await post_promote(client, headers=AUTH)
    assert (status, body) == (500, {"error": "internal server error"})
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


# --- promote -------------------------------------------------------------------------------


async def test_promote_without_token_is_401_with_challenge(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer "}):
        status, body, response = await post_promote(client, headers=headers)
        assert status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in body
    assert control.calls == []


async def test_promote_with_wrong_token_is_403(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    for token in ("wrong", TOKEN + "x", TOKEN[:-1], "\u00e9t\u00e9"):
        status, body, _ = await post_promote(client, headers={"Authorization": f"Bearer {token}"})
        assert status == 403
        assert "error" in body
    assert control.calls == []


async def test_promote_passes_exact_arguments(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    status, body, _ = await post_promote(client, headers=AUTH)
    assert status == 200
    assert msgspec.convert(body, PromoteResult) == RESULT
    request = {"force": True, "reason": "primary host lost", "wait": False, "timeout": 2.5}
    status, _, _ = await post_promote(client, request, {"Authorization": f"bearer  {TOKEN}"})
    assert status == 200
    assert control.calls == [
        PromoteCall(force=False, reason=None, wait=True, timeout=10.0),
        PromoteCall(force=True, reason="primary host lost", wait=False, timeout=2.5),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"force": True}, "reason"),
        ({"force": True, "reason": "  "}, "reason"),
        ({"force": True, "reason": None}, "reason"),
        ({"forse": True}, "forse"),
        ({"force": "yes"}, "force"),
        ({"wait": 1}, "wait"),
        ({"reason": 5}, "reason"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 300.5}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"reason": "x" * 1001}, "reason"),
    ],
)
async def test_promote_rejects_bad_fields_naming_them(
    client: aiohttp.ClientSession, control: FakeControl, body: dict[str, Any], field: str
) -> None:
    status, response_body, _ = await post_promote(client, body, AUTH)
    assert status == 400
    assert response_body["field"] == field
    assert isinstance(response_body["error"], str)
    assert control.calls == []


@pytest.mark.parametrize("body", [b"{", b"[]", b"null", b'"force"', b"\xff\xfe", b"{} {}"])
async def test_promote_rejects_malformed_or_non_object_json(
    client: aiohttp.ClientSession, control: FakeControl, body: bytes
) -> None:
    status, response_body, _ = await post_promote(client, body, AUTH)
    assert status == 400
    assert response_body["field"] is None
    assert control.calls == []


async def test_promote_body_too_large_is_413(client: aiohttp.ClientSession) -> None:
    body = b'{"reason": "' + b"x" * 70_000 + b'"}'
    status, response_body, _ = await post_promote(client, body, AUTH)
    assert status == 413
    assert "error" in response_body


async def test_promote_refused_is_409_with_reason(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    control.refuse = "standby is 8 commands behind"
    status, body, _ = await post_promote(client, headers=AUTH)
    assert (status, body) == (
        409,
        {"error": "promotion refused", "reason": "standby is 8 commands behind"},
    )


async def test_promote_that_does_not_finish_in_time_is_504(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    control.gate = asyncio.Event()  # never set: the node never finishes
    status, body, _ = await post_promote(client, {"timeout": 0.01}, AUTH)
    assert (status, body) == (504, {"error": "promotion did not complete in time", "timeout": 0.01})


@pytest.mark.parametrize(
    ("failure", "status", "body"),
    [
        (ConfigError("reason", "needs words"), 400, {"error": "needs words", "field": "reason"}),
        (
            JournalUnavailable("no ack in 2 s"),
            503,
            {"error": "promotion failed; retry later", "detail": "no ack in 2 s"},
        ),
        (FencedError("deposed"), 500, {"error": "internal server error"}),
    ],
)
async def test_promote_translates_node_errors(
    client: aiohttp.ClientSession,
    control: FakeControl,
    failure: Exception,
    status: int,
    body: dict[str, Any],
) -> None:
    control.fail = failure
    assert (await post_promote(client, headers=AUTH))[:2] == (status, body)


async def test_token_never_logged_and_forced_promotion_warns(
    client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await post_promote(client, headers={"Authorization": "Bearer not-" + TOKEN})
    await post_promote(client, {"force": True}, AUTH)
    await post_promote(client, {"force": True, "reason": "site A is down"}, AUTH)
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert TOKEN not in logged
    assert any(
        r.levelno == logging.WARNING and "site A is down" in r.getMessage() for r in caplog.records
    )


async def test_server_without_token_lets_promote_through(control: FakeControl) -> None:
    async with (
        AdminServer(control, AdminSettings(allow_no_token=True)) as server,
        aiohttp.ClientSession(base_url=server.url) as client,
    ):
        status, _, _ = await post_promote(client)
        _, document = await get_json(client, "/openapi.json")
    assert status == 200
    assert len(control.calls) == 1
    assert document["paths"]["/admin/promote"]["post"]["security"] == []
    assert "securitySchemes" not in document["components"]


async def test_gzip_body_is_decoded_and_a_broken_one_is_400(
    client: aiohttp.ClientSession, control: FakeControl, caplog: pytest.LogCaptureFixture
) -> None:
    zipped = {"Content-Encoding": "gzip", **AUTH}
    status, _, _ = await post_promote(client, gzip.compress(b'{"reason": "zipped"}'), zipped)
    assert status == 200
    assert control.calls[0].reason == "zipped"
    status, body, _ = await post_promote(client, b"not gzip at all", zipped)
    assert (status, body) == (400, {"error": "request body could not be read"})
    assert await get_json(client, "/healthz") == (200, {"status": "alive"})
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- settings, tokens, lifecycle -----------------------------------------------------------


def test_settings_require_a_token_and_mask_it() -> None:
    with pytest.raises(ConfigError) as excinfo:
        AdminSettings()
    assert excinfo.value.field == "token"
    assert AdminSettings(allow_no_token=True).token is None
    settings = AdminSettings(token=TOKEN, port=8080)
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert "port=8080" in repr(settings)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"token": ""}, "token"),
        ({"token": "has space"}, "token"),
        ({"token": "caf\u00e9"}, "token"),
        ({"token": TOKEN, "port": 70000}, "port"),
        ({"token": TOKEN, "port": True}, "port"),
        ({"token": TOKEN, "host": ""}, "host"),
    ],
)
def test_settings_reject_bad_values(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        AdminSettings(**changes)
    assert excinfo.value.field == field
    if changes.get("token"):
        assert changes["token"] not in str(excinfo.value)


def test_load_token_from_value_env_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_token(value=None, env=None, file=None) is None
    assert load_token(value=f"  {TOKEN}\n") == TOKEN
    monkeypatch.setenv("JETSTANDBY_TEST_TOKEN", f"{TOKEN}\n")
    assert load_token(env="JETSTANDBY_TEST_TOKEN") == TOKEN
    path = tmp_path / "token"
    path.write_text(f"\n{TOKEN}  \n")
    assert load_token(file=path) == TOKEN
    assert load_token(file=str(path)) == TOKEN


def test_load_token_errors_name_the_source_not_the_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing, empty, binary = tmp_path / "missing", tmp_path / "empty", tmp_path / "binary"
    empty.write_text(" \n")
    binary.write_bytes(TOKEN.encode() + b"\xff")
    for path in (missing, empty, binary, tmp_path):
        with pytest.raises(ConfigError) as excinfo:
            load_token(file=path)
        assert excinfo.value.field == "token_file"
        assert str(path) in str(excinfo.value)
        assert TOKEN not in str(excinfo.value)
    monkeypatch.delenv("JETSTANDBY_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="JETSTANDBY_UNSET_TOKEN"):
        load_token(env="JETSTANDBY_UNSET_TOKEN")
    with pytest.raises(ConfigError) as excinfo:
        load_token(value=TOKEN, env="JETSTANDBY_TEST_TOKEN")
    assert TOKEN not in str(excinfo.value)
    with pytest.raises(ConfigError):
        load_token(value=" ")


async def test_lifecycle_port_url_and_idempotent_aclose(control: FakeControl) -> None:
    server = AdminServer(control, AdminSettings(token=TOKEN))
    with pytest.raises(RuntimeError):
        _ = server.url
    await server.start()
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    with pytest.raises(RuntimeError):
        await server.start()
    port = server.port
    await server.aclose()
    await server.aclose()
    with pytest.raises(RuntimeError):
        _ = server.url
    with pytest.raises(RuntimeError):
        await server.start()
    with socket.create_server(("127.0.0.1", port)):  # the port was released
        pass


async def test_port_in_use_is_a_config_error(server: AdminServer, control: FakeControl) -> None:
    clash = AdminServer(control, AdminSettings(token=TOKEN, port=server.port))
    with pytest.raises(ConfigError) as excinfo:
        await clash.start()
    assert excinfo.value.field == "port"
    await clash.aclose()


# --- fuzzing -------------------------------------------------------------------------------

FUZZ_SETTINGS: Final = settings(
    max_examples=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
# 503 (not ready) and 504 (promotion timed out) are designed answers of these two operations.
FUZZ_CONFIG: Final = schemathesis.Config.from_str(
    """
    [[operations]]
    include-path = "/readyz"
    checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

    [[operations]]
    include-path = "/admin/promote"
    checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]

    [[operations]]
    include-path = "/admin/snapshot"
    checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
    """
)
RESPONSE_CHECKS: Final = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def fuzz_from_openapi(url: str) -> tuple[set[str], dict[int, int]]:
    """Schemathesis over every operation of the served document, with and without the token.

    Positive and negative (schema-violating) data; every response must be a documented,
    schema-conformant non-5xx, and negative data must be rejected with a 4xx. Returns the
    operations fuzzed and how many responses had each status, to show the run was not vacuous.
    Blocking: run it in a thread.
    """
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=FUZZ_CONFIG)
    labels: set[str] = set()
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        labels.add(operation.label)
        modes = [GenerationMode.POSITIVE]
        if operation.body:  # nothing to negate in an operation without inputs
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            for headers in (AUTH, {}):
                fuzz_operation(operation, mode, url, headers, statuses)
    return labels, statuses


def fuzz_operation(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    url: str,
    headers: dict[str, str],
    statuses: dict[int, int],
) -> None:
    checks = [*RESPONSE_CHECKS]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(base_url=url, headers=headers, checks=checks)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    run()


async def test_fuzz_from_openapi_never_yields_5xx() -> None:
    async with AdminServer(RotatingControl(), AdminSettings(token=TOKEN)) as server:
        labels, statuses = await asyncio.to_thread(fuzz_from_openapi, server.url)
    # Loaded from a URL, schemathesis leaves out the operation serving the document itself.
    assert labels == {
        "GET /status",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "POST /admin/promote",
        "POST /admin/skip",
        "POST /admin/snapshot",
    }
    assert {200, 400, 401, 403, 409, 503, 504} <= statuses.keys()
    assert not statuses.keys() - {200, 400, 401, 403, 409, 503, 504}


async def test_fuzz_from_openapi_catches_a_server_error() -> None:
    # The harness is only worth something if a 500 fails it.
    async with AdminServer(BrokenControl(), AdminSettings(token=TOKEN)) as server:
        with pytest.raises(FailureGroup) as excinfo:
            await asyncio.to_thread(fuzz_from_openapi, server.url)
    assert any(isinstance(failure, ServerError) for failure in excinfo.value.exceptions)


def raw_request(
    url: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


KNOWN_METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND")
_URL_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789-._~%/?&=+:@!$'()*,;"
_HEADER_TEXT: Final = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40
)
_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
_promote_fields: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.sampled_from(["force", "reason", "wait", "timeout", "extra", ""]), _json_values
)
_bodies: st.SearchStrategy[bytes | None] = st.one_of(
    st.none(),
    st.binary(max_size=64),
    _json_values.map(msgspec.json.encode),
    _promote_fields.map(msgspec.json.encode),
)
_paths: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(
        [
            *("/status", "/healthz", "/readyz", "/metrics", "/openapi.json", "/admin/promote"),
            *("/", "/admin", "/admin/promote/", "/status/", "//status", "/%zz", "/a/../status"),
        ]
    ),
    st.text(alphabet=_URL_CHARS, max_size=30).map(lambda text: "/" + text),
)
_auth: st.SearchStrategy[str | None] = st.one_of(
    st.just(f"Bearer {TOKEN}"),  # a quarter of the requests get past authentication
    st.sampled_from([None, f"bearer  {TOKEN}", "Bearer", "Basic abc"]),
    _HEADER_TEXT,
    _HEADER_TEXT.map(lambda text: f"Bearer {text}"),
)
_content_types: st.SearchStrategy[str | None] = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "*/*; x"]
)


def assert_not_5xx_and_json_errors(method: str, status: int, payload: bytes) -> None:
    assert status < 500 or status in (503, 504), (status, payload)  # both by design
    # aiohttp's HTTP parser answers a method it does not know with a plain-text 400 before
    # any application code runs; every response the application makes is JSON.
    if status >= 400 and method in KNOWN_METHODS and method != "HEAD":
        body = msgspec.json.decode(payload)
        if status == 503 and "ready" in body:
            return  # GET /readyz of a node that is not ready: a readiness report, by design
        assert isinstance(body["error"], str), (status, payload)


def fuzz_raw_requests(url: str) -> None:
    """Arbitrary methods, paths, headers and bodies (invalid JSON, wrong types, junk gzip)."""

    @settings(FUZZ_SETTINGS, max_examples=300)
    @given(
        method=st.sampled_from(KNOWN_METHODS)
        | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8),
        path=_paths,
        auth=_auth,
        content_type=_content_types,
        body=_bodies,
        gzipped=st.booleans(),
    )
    def run(
        method: str,
        path: str,
        auth: str | None,
        content_type: str | None,
        body: bytes | None,
        gzipped: bool,
    ) -> None:
        headers = {} if auth is None else {"Authorization": auth}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        status, payload = raw_request(url, method, path, body=body, headers=headers)
        assert_not_5xx_and_json_errors(method, status, payload)

    run()


def fuzz_promote_bodies(url: str) -> None:
    """Authenticated promotions with arbitrary bodies: junk bytes, any JSON, wrong types."""

    @settings(FUZZ_SETTINGS, max_examples=200)
    @given(body=_bodies, content_type=_content_types)
    def run(body: bytes | None, content_type: str | None) -> None:
        headers = dict(AUTH) if content_type is None else {**AUTH, "Content-Type": content_type}
        status, payload = raw_request(url, "POST", "/admin/promote", body=body, headers=headers)
        assert_not_5xx_and_json_errors("POST", status, payload)

    run()


async def test_fuzz_raw_requests_never_yield_5xx(caplog: pytest.LogCaptureFixture) -> None:
    async with AdminServer(RotatingControl(), AdminSettings(token=TOKEN)) as server:
        await asyncio.to_thread(fuzz_raw_requests, server.url)
        await asyncio.to_thread(fuzz_promote_bodies, server.url)
    # Neither our 500 path nor an exception aiohttp met outside a handler. (aiohttp does log
    # the garbage its own parser rejects; that is not ours to silence.)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in errors if r.name.startswith("jetstandby")]
    assert not [r for r in errors if r.getMessage() == "Unhandled exception"]


# --- skip and snapshot ---------------------------------------------------------------------


async def post(
    client: aiohttp.ClientSession, path: str, body: bytes | dict[str, Any], headers: dict[str, str]
) -> tuple[int, Any]:
    data = msgspec.json.encode(body) if isinstance(body, dict) else body
    async with client.post(path, data=data, headers=headers) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def test_skip_needs_the_token_and_passes_exact_arguments(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    body = {"stream_seq": 9, "reason": "poison from a test"}
    assert (await post(client, "/admin/skip", body, {}))[0] == 401
    status, answer = await post(client, "/admin/skip", body, AUTH)
    assert status == 200 and msgspec.convert(answer, SkipResult) == SKIPPED
    assert control.skips == [(9, "poison from a test")]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"stream_seq": 9}, "reason"),
        ({"stream_seq": 9, "reason": ""}, "reason"),
        ({"stream_seq": 9, "reason": "   "}, "reason"),
        ({"reason": "x"}, "stream_seq"),
        ({"stream_seq": 0, "reason": "x"}, "stream_seq"),
        ({"stream_seq": "9", "reason": "x"}, "stream_seq"),
        ({"stream_seq": 9, "reason": "x", "force": True}, "force"),
    ],
)
async def test_skip_rejects_bad_fields_naming_them(
    client: aiohttp.ClientSession, control: FakeControl, body: dict[str, Any], field: str
) -> None:
    status, answer = await post(client, "/admin/skip", body, AUTH)
    assert (status, answer["field"]) == (400, field)
    assert control.skips == []


async def test_skip_and_snapshot_refusals_are_409_with_reason(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    control.refuse = "replay is not halted"
    status, answer = await post(client, "/admin/skip", {"stream_seq": 3, "reason": "x"}, AUTH)
    assert (status, answer) == (409, {"error": "skip refused", "reason": "replay is not halted"})
    status, answer = await post(client, "/admin/snapshot", b"", AUTH)
    assert (status, answer["error"]) == (409, "snapshot refused")


async def test_snapshot_returns_its_metadata_and_a_store_outage_is_503(
    client: aiohttp.ClientSession, control: FakeControl
) -> None:
    assert (await post(client, "/admin/snapshot", b"", {}))[0] == 401
    status, answer = await post(client, "/admin/snapshot", {"reason": "before upgrade"}, AUTH)
    assert status == 200 and msgspec.convert(answer, SnapshotMeta) == SNAPSHOT
    control.fail = JournalUnavailable("bucket did not answer")
    status, answer = await post(client, "/admin/snapshot", b"", AUTH)
    assert (status, answer["error"]) == (503, "snapshot failed; retry later")
    control.fail = SnapshotError("the engine could not snapshot its state", reason="capture")
    status, answer = await post(client, "/admin/snapshot", b"", AUTH)
    assert status == 503 and "could not snapshot" in answer["detail"]
    assert control.snapshots == ["before upgrade", None, None]
