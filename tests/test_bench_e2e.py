"""``jetstandby bench e2e`` end to end at tiny sizes: real processes, a real nats-server.

Only the shape and sanity of the report are checked here; the timing targets live in the
benchmark itself (its exit status), never in tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest

from jetstandby_bench.e2e import lag_cause
from jetstandby_bench.e2e_load import MASS_CANCEL_EVERY, bounded_orders
from jetstandby_bench.e2e_phases import lag_level
from jetstandby_bench.e2e_procs import LoadProcess, read_applies, renice, run_loads

TINY = [
    "--duration", "1", "--warmup", "0.5", "--lag-duration", "1", "--client-procs", "1",
    "--concurrency", "8", "--connections", "2", "--failovers", "1", "--failover-rate", "200",
    "--memory-count", "20000", "--baseline-count", "5000", "--runs", "1",
    "--skip-cluster", "--skip-profile",
]  # fmt: skip


def test_e2e_reports_every_figure(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "jetstandby", "bench", "e2e", "--json"]
    argv += ["--report-dir", str(tmp_path), *TINY]
    done = subprocess.run(argv, capture_output=True, timeout=110, check=False)
    assert done.returncode in (0, 1), done.stderr.decode()[-3000:]
    result = json.loads(done.stdout)
    for key in (
        "max_throughput", "baseline_throughput", "ratio_vs_no_replication",
        "lag_p99_ms_at_50pct", "promote_ms_p99", "rss_mb_1m", "rss_mb_5m",
    ):  # fmt: skip
        assert isinstance(result[key], int | float), key
    assert result["max_throughput"] > 0
    assert 0 < result["ratio_vs_no_replication"] < 1
    assert [level["load"] for level in result["single"]["levels"]] == [0.25, 0.5, 0.75]
    for level in result["single"]["levels"]:
        assert level["not_applied"] == 0
        assert level["failed"] == 0
        assert 0 <= level["latency_ms"]["p50"] <= level["latency_ms"]["p99.9"]
        assert set(level["run_queue_wait_ms_per_s"]) == {"primary", "standby", "nats-server1"}
        assert all(level["cpu_cores"][node] > 0 for node in ("primary", "standby"))
        for node in ("primary", "standby"):
            gc = level["gc"][node]
            assert gc["count"] >= gc["full"] and 0 <= gc["max_ms"] <= gc["total_ms"]
    # gc.callbacks saw the collections: a short level on a busy machine may have none, the
    # three of them together do (a node allocates on every command)
    collections = [level["gc"][n] for level in result["single"]["levels"] for n in level["gc"]]
    assert sum(gc["count"] for gc in collections) > 0
    assert max(gc["max_ms"] for gc in collections) > 0
    failover = result["failover"]
    assert failover["count"] == 1 and failover["lost_first_ack"] == 0
    assert 0 < failover["promote_ms"]["p50"] <= failover["total_ms"]["p50"]
    assert result["rss_mb_1m"] > 0
    assert result["rss_mb_5m"] > 0
    assert set(result["targets"]) == {
        "ratio_vs_no_replication",
        "lag_p99_ms_at_50pct",
        "promote_ms_p99",
        "rss_growth",
    }
    exit_ok = all(target["met"] for target in result["targets"].values())
    assert done.returncode == (0 if exit_ok else 1)
    assert (Path(result["report"]) / "chart.png").stat().st_size > 10_000


def test_the_mix_cancels_every_account_regularly_one_at_a_time() -> None:
    commands = list(bounded_orders(1, 2 * MASS_CANCEL_EVERY))
    assert len(commands) == 2 * MASS_CANCEL_EVERY
    mass = [i for i, (ctype, _, _) in enumerate(commands) if ctype == "MassCancel"]
    assert len(mass) == 32 and mass[-1] == len(commands) - 1
    assert {b - a for a, b in itertools.pairwise(mass)} == {MASS_CANCEL_EVERY // 16}
    accounts = [msgspec.msgpack.decode(commands[i][2])["account"] for i in mass]
    assert accounts[:16] == accounts[16:] and len(set(accounts)) == 16


def test_lag_is_from_the_acknowledgement_to_the_apply() -> None:
    # rows: (seq, sent, acked); applies: (seq, applied, stamped)
    rows = np.array([[1, 0, 10_000_000], [2, 0, 20_000_000]], dtype=np.int64)
    applies = np.array([[1, 12_000_000, 5_000_000], [2, 19_000_000, 6_000_000]], dtype=np.int64)
    level = lag_level(0.5, 100.0, 1.0, rows, 0, applies)
    assert level["lag_ms"]["max"] == 2.0
    assert level["lag_ms"]["p99"] < level["lag_ms"]["p99.9"] < level["lag_ms"]["max"]
    assert level["lag_min_ms"] == -1.0
    assert level["lag_negative_share"] == 0.5
    assert level["stamp_to_apply_ms"]["max"] == 13.0


def test_a_missed_lag_target_names_the_standby_s_waits_and_pauses() -> None:
    level = {
        "load": 0.5,
        "cpu_cores": {"primary": 0.5, "standby": 0.28, "machine": 1.91, "others": 0.7},
        "run_queue_wait_ms_per_s": {"primary": 405.5, "standby": 306.1, "nats-server1": 1111.4},
        "gc": {"standby": {"count": 42, "full": 0, "total_ms": 71.3, "max_ms": 13.5}},
    }
    cause = lag_cause(level, 2)
    assert "1.91 of 2 cores busy" in cause
    assert "0.28 of a core" in cause and "306 ms in every second" in cause
    assert "primary 406, nats-server1 1111" in cause
    assert "13.5 ms at most (42 collections, 0 full)" in cause


def test_bench_lag_repeats_a_fixed_rate_on_fresh_nodes_and_reports_the_median() -> None:
    argv = [sys.executable, "-m", "jetstandby", "bench", "lag", "--json", "--runs", "2"]
    argv += ["--rate", "150", "--duration", "1", "--warmup-rate", "150", "--warmup", "0.5"]
    argv += ["--client-procs", "1", "--connections", "1", "--check-exactly-once"]
    argv += ["--standby-nice", "3"]  # a lower priority: allowed without root
    done = subprocess.run(argv, capture_output=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = json.loads(done.stdout)
    assert len(result["runs"]) == 2 and result["standby_nice"] == 3
    for run in result["runs"]:
        assert run["not_applied"] == 0 and run["failed"] == 0
        assert run["achieved_per_s"] > 0
        assert run["duplicate_applies"] == 0 and run["overloaded"] == 0
        assert run["journaled"] >= 150 * 1 + 150 * 0.5  # warm-up and level, and the marker
        assert run["lag_ms"]["p99"] <= run["lag_ms"]["p99.9"] <= run["lag_ms"]["max"]
    p99s = sorted(run["lag_ms"]["p99"] for run in result["runs"])
    assert result["lag_p99_ms"] == {
        "median": round(sum(p99s) / 2, 3),
        "min": p99s[0],
        "max": p99s[1],
    }


def test_renice_sets_every_thread_of_a_process() -> None:
    two_threads = (
        "import sys, threading; threading.Thread(target=threading.Event().wait, daemon=True)"
        ".start(); print('ready', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen([sys.executable, "-c", two_threads], stdin=PIPE, stdout=PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            renice(proc.pid, 4)
            tasks = os.listdir(f"/proc/{proc.pid}/task")
            assert len(tasks) == 2
            assert {os.getpriority(os.PRIO_PROCESS, int(task)) for task in tasks} == {4}
        finally:
            proc.kill()


def test_a_missing_apply_record_is_an_error_naming_the_standbys_exit(tmp_path: Path) -> None:
    # Every command would otherwise count as "not applied" (the record is written at exit).
    standby = SimpleNamespace(proc=SimpleNamespace(returncode=-9), log=tmp_path / "s.log")
    with pytest.raises(RuntimeError, match=r"not written: it exited with -9 .*s\.log"):
        read_applies(tmp_path / "missing.applies", standby)  # type: ignore[arg-type]


async def test_load_processes_that_do_not_finish_are_killed_not_left_running(
    tmp_path: Path,
) -> None:
    silent = "import sys, time; sys.stdin.readline(); time.sleep(120)"  # takes GO, never DONE
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", silent, stdin=PIPE, stdout=PIPE
    )
    load = LoadProcess(proc, tmp_path / "rows")
    with pytest.raises(TimeoutError):
        await run_loads([load], timeout=0.5)
    assert proc.returncode == -signal.SIGKILL
