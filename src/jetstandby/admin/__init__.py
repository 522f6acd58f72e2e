"""The admin HTTP API: status, health, readiness, Prometheus metrics and promotion.

The web framework (aiohttp) is imported only inside this package. The API drives a node only
through the narrow :class:`~jetstandby.status.NodeControl` protocol.
"""

from __future__ import annotations

from jetstandby.admin.server import AdminServer
from jetstandby.admin.settings import AdminSettings, load_token

__all__ = ["AdminServer", "AdminSettings", "load_token"]
