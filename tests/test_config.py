from __future__ import annotations

import pytest

from jetstandby import ConfigError, JournalSettings, ReplaySettings


def test_defaults_are_valid_and_derive_names() -> None:
    settings = JournalSettings(journal="orders")
    assert settings.stream == "JSB_ORDERS"
    assert settings.subject == "jsb.orders.journal"
    assert ReplaySettings().catch_up_interval == 0.25
    assert ReplaySettings().progress_log_interval == 10.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"replicas": 2}, "replicas"),
        ({"window": 0}, "window"),
        ({"ack_every": 0}, "ack_every"),
        ({"ack_every": 2048}, "ack_every"),
        ({"ack_timeout": -1}, "ack_timeout"),
        ({"ack_timeout": float("nan")}, "ack_timeout"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"journal": "Bad Name"}, "journal"),
        ({"unavailable_after": 200.0}, "unavailable_after"),
    ],
)
def test_bad_journal_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        JournalSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"catch_up_interval": 0}, "catch_up_interval"),
        ({"idle_heartbeat": 0.01}, "idle_heartbeat"),
        ({"resubscribe_delay": -1}, "resubscribe_delay"),
        ({"pending_msgs_limit": 0}, "pending_msgs_limit"),
    ],
)
def test_bad_replay_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ReplaySettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_settings_are_frozen() -> None:
    settings = JournalSettings()
    with pytest.raises(AttributeError):
        settings.window = 5  # type: ignore[misc]
