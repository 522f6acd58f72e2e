"""Scenario 7: bad operator input, end to end through the real command and a real node.

``jetstandby run`` as a process with a config holding an unknown key, a malformed TOML file,
a wrong engine path, a ``--nats`` nothing answers at: each exits 2 naming the problem. Against a
running node: ``jetstandby promote`` without a token exits 2 (401), and a promote request
with malformed JSON gets a 400 naming no field. The in-process detail of each refusal is
tested in tests/test_runconfig.py, tests/test_cli.py and tests/test_admin.py; this is the
whole path once, with real processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from jetstandby.engines.kv import KeyValueEngine
from jetstandby.history import check
from jetstandby.server import NatsServer
from jetstandby_bench.faults_common import Nodes, ScenarioResult

EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3


async def _jetstandby(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jetstandby",
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, " ".join(err.decode(errors="replace").split())


def _raw_post(url: str, body: bytes, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def bad_input(cycles: int, workdir: Path, *, seed: int = 1) -> ScenarioResult:
    token = workdir / "token"
    token.write_text("bad-input-token-0123")
    (workdir / "unknown.toml").write_text("colour = 'red'\n")
    (workdir / "malformed.toml").write_text("role = 'standby\nnats = \n")
    cases: list[tuple[str, list[str], int, str]] = [
        ("unknown key", ["--config", str(workdir / "unknown.toml")], EXIT_USAGE, "colour"),
        ("malformed TOML", ["--config", str(workdir / "malformed.toml")], EXIT_USAGE, "toml"),
        ("wrong engine", ["--engine", "no.such:Engine"], EXIT_USAGE, "no.such"),
        ("unreachable NATS", ["--nats", "nats://127.0.0.1:1"], EXIT_USAGE, "--nats"),
    ]
    problems: list[str] = []
    facts: dict[str, Any] = {}
    for _ in range(cycles):
        for name, args, want, needle in cases:
            argv = ["run", "--token-file", str(token), "--admin", "127.0.0.1:0", *args]
            code, err = await _jetstandby(*argv)
            facts[name] = f"exit {code}: {err[:160]}"
            if code != want or needle.lower() not in err.lower():
                problems.append(f"{name}: exit {code} (want {want}), stderr {err[:300]!r}")
        async with NatsServer() as server, Nodes(workdir, server.url) as nodes:
            node = await nodes.start()
            env = {"JETSTANDBY_TOKEN": ""}
            code, err = await _jetstandby("promote", "--admin", node.admin, env=env)
            facts["promote without a token"] = f"exit {code}: {err[:160]}"
            if code != EXIT_USAGE or ("401" not in err and "token" not in err.lower()):
                problems.append(f"promote without a token: exit {code}, stderr {err[:300]!r}")
            url = node.admin + "/admin/promote"
            status, body = await asyncio.to_thread(_raw_post, url, b'{"force": tru', nodes.token)
            facts["promote with malformed JSON"] = f"HTTP {status}: {body[:160]}"
            if status != 400:
                problems.append(f"promote with malformed JSON answered {status}: {body[:300]}")
            if (await node.status())["role"] != "standby":
                problems.append("a refused promote changed the node's role")
    empty = check([], [], engine_factory=KeyValueEngine)
    return ScenarioResult("bad_input", cycles, 0, empty, facts=facts, problems=problems)
