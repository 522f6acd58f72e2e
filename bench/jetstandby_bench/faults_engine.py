"""An engine for the fault scenarios: the kv engine slowed down, so a replay stays long."""

from __future__ import annotations

import os
import time
from typing import Final

from jetstandby.engine import Command
from jetstandby.engines.kv import KeyValueEngine

DELAY_ENV: Final = "JSB_FAULTS_APPLY_DELAY"
SLOW_KV: Final = "jetstandby_bench.faults_engine:SlowKeyValue"


class SlowKeyValue(KeyValueEngine):
    """The kv engine (same name, same digests), sleeping ``$JSB_FAULTS_APPLY_DELAY`` seconds
    per command."""

    def __init__(self) -> None:
        super().__init__()
        self.delay = float(os.environ.get(DELAY_ENV, "0"))

    def apply(self, command: Command) -> bytes:
        if self.delay:
            time.sleep(self.delay)
        return super().apply(command)


class SkippingKeyValue(KeyValueEngine):
    """A deliberately broken replica: it acknowledges every 1000th command it is given
    without applying it. The checker must flag its digest (the suite's self-test)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def apply(self, command: Command) -> bytes:
        self.seen += 1
        if self.seen % 1000 == 0:
            return b"\x81\xa2ok\xc3"  # {"ok": true}, and nothing done
        return super().apply(command)
