"""create_system refuses bad input before anything touches a database."""

from __future__ import annotations

import pytest

import skivi


def test_create_system_names_the_cron_entry_when_its_schedule_is_invalid() -> None:
    with pytest.raises(skivi.ConfigError, match="nightly") as info:
        skivi.create_system({}, {}, [{"identifier": "nightly", "schedule": "61 * * * *"},
                                     {"identifier": "ok", "schedule": "0 * * * *"}])
    assert "schedule" in str(info.value)


def test_create_system_reports_every_bad_cron_entry_when_several_are_bad() -> None:
    with pytest.raises(skivi.ConfigError) as info:
        skivi.create_system({"cron": [{"identifier": "a", "schedule": "* * * * *",
                                       "timezone": "Mars/Olympus"}]},
                            crontabs=[{"identifier": "a", "schedule": "* * * * *"},
                                      {"identifier": "b", "schedule": "* * * * *",
                                       "payload": [1, 2]}])
    message = str(info.value)
    assert "Mars/Olympus" in message and "duplicate" in message and "'b'" in message


def test_create_system_accepts_cron_entries_when_valid() -> None:
    system = skivi.create_system({}, {}, [{"identifier": "hourly", "schedule": "0 * * * *",
                                           "backfill": "2h", "timezone": "Europe/Berlin"}])
    assert [e.identifier for e in system.cron_entries] == ["hourly"]
