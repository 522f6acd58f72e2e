"""`jetstandby run` configuration: flags over JETSTANDBY_* over the TOML file; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from jetstandby.cli import EXIT_USAGE, main
from jetstandby.config import MAX_BACKLOG
from jetstandby.errors import ConfigError
from jetstandby.runconfig import load
from jetstandby.state import DEFAULT_DEDUP_WINDOW


def test_precedence_flags_then_env_then_file(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text('role = "primary"\njournal = "fromfile"\nmax_promote_lag = 5\nnode_id = "f"\n')
    env = {"JETSTANDBY_JOURNAL": "fromenv", "JETSTANDBY_MAX_PROMOTE_LAG": "7", "HOME": "/x"}
    config = load(file=file, env=env, flags={"journal": "fromflag", "node_id": None})
    assert (config.role, config.journal, config.max_promote_lag, config.node_id) == (
        "primary",
        "fromflag",
        7,
        "f",
    )
    settings = config.node_settings()
    assert settings.journal.stream == "JSB_FROMFLAG" and settings.max_promote_lag == 7


def test_the_capture_and_heap_settings_reach_the_node() -> None:
    defaults = load(file=None, env={}).node_settings()
    assert defaults.snapshots.capture == "fork" and defaults.freeze_heap
    env = {"JETSTANDBY_SNAPSHOT_CAPTURE": "thread", "JETSTANDBY_FREEZE_HEAP": "false"}
    settings = load(file=None, env=env).node_settings()
    assert settings.snapshots.capture == "thread" and not settings.freeze_heap


def test_the_backlog_bound_reaches_the_node_and_stays_inside_the_exactly_once_window() -> None:
    assert MAX_BACKLOG * 10 <= DEFAULT_DEDUP_WINDOW
    assert load(file=None, env={}).node_settings().max_backlog == 1000
    env = {"JETSTANDBY_MAX_BACKLOG": "50"}
    assert load(file=None, env=env).node_settings().max_backlog == 50


def test_defaults_and_a_random_node_id() -> None:
    config = load(file=None, env={})
    assert config.role == "standby" and config.admin_address() == ("127.0.0.1", 7070)
    first, second = config.node_settings().node_id, config.node_settings().node_id
    assert first != second  # two nodes never share an id by default


@pytest.mark.parametrize(
    ("toml", "env", "field", "needle"),
    [
        ("colour = 'red'\n", {}, "colour", "unknown key"),
        ("role = [\n", {}, "config", "not valid TOML"),
        ("role = 'leader'\n", {}, "role", "Invalid enum value 'leader'"),
        (
            "",
            {"JETSTANDBY_MAX_PROMOTE_LAG": "lots"},
            "max_promote_lag",
            "JETSTANDBY_MAX_PROMOTE_LAG",
        ),
        ("", {"JETSTANDBY_COLOUR": "red"}, "JETSTANDBY_COLOUR", "unknown setting"),
        ("admin = 'nowhere'\n", {}, "admin", "not HOST:PORT"),
        ("node_id = 'has space'\n", {}, "node_id", "must match"),
        ("journal = 'Bad.Name'\n", {}, "journal", "must match"),
        (
            "",
            {"JETSTANDBY_SNAPSHOT_CAPTURE": "vfork"},
            "snapshot_capture",
            "JETSTANDBY_SNAPSHOT_CAPTURE",
        ),
        ("freeze_heap = 'sometimes'\n", {}, "freeze_heap", "Expected `bool`"),
        ("snapshot_capture_timeout = 0\n", {}, "snapshot_capture_timeout", "positive"),
        ("max_backlog = 0\n", {}, "max_backlog", "from 1 to 10000"),
        ("max_backlog = 20000\n", {}, "max_backlog", "exactly-once window"),
    ],
)
def test_bad_values_name_the_key_and_the_source(
    tmp_path: Path, toml: str, env: dict[str, str], field: str, needle: str
) -> None:
    file = tmp_path / "node.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load(file=file, env=env)
    assert info.value.field == field
    assert needle in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.toml"):
        load(file=tmp_path / "missing.toml", env={})


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--config", "{tmp}/bad.toml"], "colour: unknown key"),
        (
            ["run", "--engine", "no.such:Engine", "--token-file", "{tmp}/token"],
            "engine: cannot import",
        ),
        (["run", "--admin", "127.0.0.1:0"], "token"),
    ],
)
def test_run_exits_2_on_bad_configuration(
    tmp_path: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.toml").write_text("colour = 'red'\n")
    (tmp_path / "token").write_text("tok")
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    assert code == EXIT_USAGE
    assert needle in capsys.readouterr().err
