"""``jetstandby bench bootstrap`` end to end at a tiny size: a real server, real nodes.

Only the shape and sanity of the report are checked here; the timing target lives in the
benchmark itself (its exit status), never in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

from pytest import approx

COUNT, TAIL = 5_000, 500
KEYS = ("full_replay_s", "snapshot_bootstrap_s", "snapshot_bytes", "take_s", "restore_s")


def test_bootstrap_reports_every_figure() -> None:
    argv = [sys.executable, "-m", "jetstandby", "bench", "bootstrap", "--json"]
    argv += ["--count", str(COUNT), "--tail", str(TAIL)]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode in (0, 1), done.stderr.decode()[-3000:]
    result = json.loads(done.stdout)
    for key in KEYS:
        assert isinstance(result[key], int | float) and result[key] > 0, key
    assert (result["count"], result["tail"]) == (COUNT, TAIL)
    assert len(result["runs"]) == 1
    assert (
        result["full_replay_resubscribes"] >= 0 and result["snapshot_bootstrap_resubscribes"] >= 0
    )
    # The parts were measured, not derived, and every figure is a plausible duration for
    # 5,500 commands.
    rounding = 2e-4  # each figure is rounded to 4 decimals
    parts = result["adopt_s"] + result["tail_replay_s"]
    assert parts == approx(result["snapshot_bootstrap_s"], abs=rounding)
    assert 0 < result["adopt_s"] < result["snapshot_bootstrap_s"]
    for part in ("pause_s", "capture_s", "thread_pause_s", "store_s"):
        assert 0 < result[part] < 30, part
    for key in KEYS[:2] + KEYS[3:]:
        assert result[key] < 30, key
    # The snapshot holds the book and an exactly-once record of 5,001 request ids.
    assert 100_000 < result["snapshot_bytes"] < 10_000_000
    speedup = result["full_replay_s"] / result["snapshot_bootstrap_s"]
    assert result["ratio"] == approx(speedup, rel=0.01)
    assert set(result["targets"]) == {"ratio"}
    assert done.returncode == (0 if result["targets"]["ratio"]["met"] else 1)
