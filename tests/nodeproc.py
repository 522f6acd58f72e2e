"""Nodes as separate OS processes (``python -m jetstandby run``), for the process tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN = "test-token-0123456789"


class NodeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, node_id: str, admin: str, log: Path):
        self.proc, self.node_id, self.admin, self.log = proc, node_id, admin, log

    @classmethod
    async def start(
        cls,
        tmp: Path,
        node_id: str,
        nats_url: str,
        *,
        role: str = "standby",
        engine: str = "kv",
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        log = tmp / f"{node_id}.log"
        with log.open("wb") as stderr:  # the child keeps its own descriptor
            proc = await cls._spawn(node_id, nats_url, role, engine, token_file, extra, env, stderr)
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"{node_id} exited early:\n{log.read_text()[-3000:]}")
                if line.startswith("READY "):
                    fields = dict(part.split("=", 1) for part in line.split()[1:])
                    return cls(proc, node_id, fields["admin"], log)

    @staticmethod
    async def _spawn(
        node_id: str,
        nats_url: str,
        role: str,
        engine: str,
        token_file: Path,
        extra: tuple[str, ...],
        env: dict[str, str] | None,
        stderr: Any,
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
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
            "p",
            "--token-file",
            str(token_file),
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )

    async def http(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        def call() -> tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(self.admin + path, data=data, method=method)
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read() or b"null")

        return await asyncio.to_thread(call)

    async def status(self) -> dict[str, Any]:
        code, body = await self.http("GET", "/status")
        assert code == 200, body
        return dict(body)

    async def wait_status(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        """Poll /status (another process: there is no event to wait on) until it holds."""
        async with asyncio.timeout(timeout):
            while True:
                status = await self.status()
                if predicate(status):
                    return status
                await asyncio.sleep(0.05)

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
