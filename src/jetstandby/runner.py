"""``jetstandby run``: one node process, its admin API, and (by default) an embedded server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from jetstandby.admin import AdminServer, AdminSettings, load_token
from jetstandby.aio import cancel_and_wait
from jetstandby.engine import load_engine
from jetstandby.journal.stream import close_quietly, connect
from jetstandby.node import Node
from jetstandby.runconfig import RunConfig, nats_flag
from jetstandby.server import NatsServer
from jetstandby.status import Role

logger = logging.getLogger(__name__)


async def run_node(config: RunConfig, *, on_ready: Callable[[str], None]) -> tuple[Role, bool]:
    """Run until the node stops serving (returns ``(Role.FENCED, deposed)``; ``deposed`` is
    True when a newer epoch fenced it) or the task is cancelled.

    ``on_ready`` gets one line, ``READY node=... admin=... nats=...``, once the admin API
    answers. With ``stay_up``, a fenced node keeps its admin API up until cancelled.
    """
    host, port = config.admin_address()
    # A token file wins over a token value, wherever each came from.
    token = load_token(file=config.token_file) if config.token_file else config.token
    admin_settings = AdminSettings(host=host, port=port, token=token)
    settings = config.node_settings()
    engine = load_engine(config.engine)
    async with contextlib.AsyncExitStack() as stack:
        url = config.nats
        if url is None:
            server = await stack.enter_async_context(
                NatsServer(sync_always=config.durability == "fsync")
            )
            url = server.url
            logger.info("embedded nats-server at %s", url)
        async with nats_flag(config.nats):  # a --nats nothing answers at is bad input
            nc = await connect(url, name=f"jetstandby-{settings.node_id}")
        stack.push_async_callback(close_quietly, nc)
        node = Node(nc, engine, settings, engine_factory=lambda: load_engine(config.engine))
        admin = await stack.enter_async_context(AdminServer(node, admin_settings))
        task = asyncio.get_running_loop().create_task(node.run(as_primary=config.role == "primary"))
        try:
            started = asyncio.get_running_loop().create_task(node.wait_started())
            await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():  # it failed before it could start
                started.cancel()
                return task.result(), node.deposed
            on_ready(f"READY node={settings.node_id} admin={admin.url} nats={url}")
            role = await task
            if role is Role.FENCED and config.stay_up:
                logger.warning("fenced; staying up as asked (admin API at %s)", admin.url)
                await asyncio.Event().wait()
            return role, node.deposed
        finally:
            await cancel_and_wait(task)
