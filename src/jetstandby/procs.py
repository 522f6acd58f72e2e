"""Nodes as separate OS processes (``python -m jetstandby run``): for the demo and the tests.

A :class:`NodeProcess` is started, waits for the node's ``READY`` line (no sleeps), and talks
to its admin API with the standard library's HTTP client in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

STATUS_POLL: Final = 0.05


class NodeProcess:
    """One ``jetstandby run`` child process. Close it with :meth:`close` (idempotent)."""

    def __init__(
        self, proc: asyncio.subprocess.Process, node_id: str, admin: str, log: Path, token: str
    ) -> None:
        self.proc, self.node_id, self.admin, self.log = proc, node_id, admin, log
        self._token = token

    @classmethod
    async def start(
        cls,
        workdir: Path,
        node_id: str,
        nats_url: str,
        *,
        token: str,
        journal: str,
        role: str = "standby",
        engine: str = "kv",
        extra: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ready_within: float = 30.0,
    ) -> NodeProcess:
        token_file = workdir / f"{node_id}.token"
        token_file.write_text(token)
        log = workdir / f"{node_id}.log"
        argv = [
            sys.executable,
            "-m",
            "jetstandby",
            "run",
            "--role",
            role,
            "--engine",
            engine,
            "--nats",
            nats_url,
            "--admin",
            "127.0.0.1:0",
            "--node-id",
            node_id,
            "--journal",
            journal,
            "--token-file",
            str(token_file),
            *extra,
        ]
        with log.open("wb") as stderr:  # the child keeps its own descriptor
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **(env or {})},
            )
        try:
            admin = await _read_ready(proc, log, ready_within)
        except BaseException:
            if proc.returncode is None:  # it may have exited already: keep its error
                proc.kill()
            await proc.wait()
            raise
        return cls(proc, node_id, admin, log, token)

    async def http(
        self, method: str, path: str, body: Any = None, *, token: str | bool | None = True
    ) -> tuple[int, Any]:
        """``token=True`` sends this node's token; a string sends that; None/False none."""
        bearer = self._token if token is True else (token or None)
        return await asyncio.to_thread(http_json, method, self.admin + path, body, bearer)

    async def status(self) -> dict[str, Any]:
        code, body = await self.http("GET", "/status")
        if code != 200:
            raise RuntimeError(f"{self.node_id}: GET /status answered {code}: {body}")
        return dict(body)

    async def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll ``/status`` until ``predicate`` holds (another process: no event to await)."""
        async with asyncio.timeout(timeout):
            while True:
                status = await self.status()
                if predicate(status):
                    return status
                await asyncio.sleep(STATUS_POLL)

    async def promote(self, **body: Any) -> tuple[int, Any]:
        return await self.http("POST", "/admin/promote", {"timeout": 30, **body})

    def signal(self, signum: signal.Signals) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _read_ready(proc: asyncio.subprocess.Process, log: Path, within: float) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(within):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                await proc.wait()
                tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-3000:]
                raise RuntimeError(f"node exited ({proc.returncode}) before READY:\n{tail}")
            if line.startswith("READY "):
                fields = dict(part.split("=", 1) for part in line.split()[1:])
                return fields["admin"]


def http_json(method: str, url: str, body: Any, token: str | None) -> tuple[int, Any]:
    """One blocking JSON request: ``(status, decoded body)``; raises ``OSError`` (including
    ``urllib.error.URLError``) when the server cannot be reached."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload or b"null")
        except ValueError:
            return exc.code, {"error": payload.decode(errors="replace")}
