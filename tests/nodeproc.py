"""The process tests' defaults around :class:`jetstandby.procs.NodeProcess`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jetstandby.procs import NodeProcess

TOKEN = "test-token-0123456789"
JOURNAL = "p"


async def start(tmp: Path, node_id: str, nats_url: str, **kw: Any) -> NodeProcess:
    return await NodeProcess.start(tmp, node_id, nats_url, token=TOKEN, journal=JOURNAL, **kw)
