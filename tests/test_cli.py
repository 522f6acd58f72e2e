"""The command line: flags, exit codes, and the demo's whole story on a real server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from jetstandby.cli import EXIT_USAGE, main
from jetstandby.demo import DemoSettings, run_demo


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--duration", "soon"], "--duration: 'soon' is not a number"),
        (["demo", "--rate", "-5"], "--rate: must be >= 0"),
        (["bench", "replay", "--count", "0"], "--count: must be >= 1"),
        (["bench", "journal", "--runs", "x"], "--runs: 'x' is not an integer"),
        (["bench"], "BENCH"),
        (["server", "--durability", "maybe"], "--durability"),
        (["bench", "lag", "--standby-nice", "-21"], "--standby-nice: a nice value is -20 to 19"),
        (["frobnicate"], "COMMAND"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "Put", "{}"],
        ["snapshot", "list"],
        ["run", "--admin", "127.0.0.1:0"],
    ],
)
def test_a_nats_url_nothing_answers_at_exits_2_naming_the_flag(
    argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken")
    if argv[0] == "run":
        argv = [*argv, "--token-file", str(token)]
    code = main([*argv, "--nats", "nats://127.0.0.1:1"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "configuration error: --nats:" in err and "nats://127.0.0.1:1" in err


def test_module_entry_point_reports_its_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jetstandby", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("jetstandby ")


async def test_demo_fails_over_and_verifies_everything(tmp_path: Path) -> None:
    summary = await run_demo(
        DemoSettings(duration=4.0, rate=400, engine="kv", writers=4, report_dir=tmp_path),
        Console(file=io.StringIO()),
    )
    assert summary["ok"] is True, summary
    assert summary["lost"] == 0 and summary["duplicates"] == 0
    assert summary["digest_match"] is True and summary["contiguous"] is True
    assert summary["failover_ms"] is not None and summary["failover_ms"] > 0
    assert summary["acknowledged"] > 400
    report = Path(summary["report"])
    assert (report / "chart.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((report / "summary.json").read_text())["summary"]["lost"] == 0
