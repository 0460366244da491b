"""Unit tests for skivi.cron: entry validation and the time maths, DST policy included.

Every instant here is fixed; nothing reads the clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from skivi import ConfigError
from skivi.cron import (
    CronEntry,
    due_between,
    ensure_unique,
    load_crontab_file,
    next_tick,
    parse_crontabs,
    parse_window,
)

UTC = dt.UTC


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       microsecond: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def entry(schedule: str, timezone: str = "UTC", **extra: Any) -> CronEntry:
    [built] = parse_crontabs([{"identifier": "e", "schedule": schedule, "timezone": timezone,
                               **extra}])
    return built


def problems_of(entries: list[Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_crontabs(entries)
    return info.value.problems


def local(ticks: list[dt.datetime], timezone: str) -> list[str]:
    """Ticks as local wall time with offset, e.g. '03-31 03:00+0200'."""
    return [t.astimezone(ZoneInfo(timezone)).strftime("%m-%d %H:%M%z") for t in ticks]


# --- parsing ------------------------------------------------------------------------------------


def test_parse_crontabs_fills_defaults_when_only_identifier_and_schedule_given() -> None:
    [e] = parse_crontabs([{"identifier": "hourly-cleanup", "schedule": "0 * * * *"}])
    assert e.identifier == "hourly-cleanup"
    assert e.task == "hourly-cleanup"
    assert e.schedule == "0 * * * *"
    assert e.timezone == "UTC"
    assert e.backfill is None
    assert dict(e.payload) == {}
    assert dict(e.spec) == {}
    assert e.job_key == "cron:hourly-cleanup"
    assert e.job_key_mode == "unsafe_dedupe"


def test_parse_crontabs_keeps_every_option_when_all_given() -> None:
    [e] = parse_crontabs([{
        "identifier": "daily-report", "schedule": "0 2 * * *", "task": "report",
        "payload": {"kind": "daily", "n": [1, 2]}, "timezone": "Europe/Berlin",
        "backfill": "1d12h",
        "spec": {"queue_name": "maintenance", "priority": -5, "max_attempts": 3,
                 "job_key": "report", "job_key_mode": "replace"},
    }])
    assert e.task == "report"
    assert dict(e.payload) == {"kind": "daily", "n": [1, 2]}
    assert e.timezone == "Europe/Berlin"
    assert e.backfill == 36 * 3600.0
    assert dict(e.spec) == {"queue_name": "maintenance", "priority": -5, "max_attempts": 3,
                            "job_key": "report", "job_key_mode": "replace"}
    assert e.job_key == "report"
    assert e.job_key_mode == "replace"


def test_parse_crontabs_uses_replace_when_spec_gives_a_job_key_without_a_mode() -> None:
    [explicit, default, chosen] = parse_crontabs([
        {"identifier": "a", "schedule": "@daily", "spec": {"job_key": "report"}},
        {"identifier": "b", "schedule": "@daily", "spec": {"queue_name": "q"}},
        {"identifier": "c", "schedule": "@daily",
         "spec": {"job_key": "report-c", "job_key_mode": "unsafe_dedupe"}},
    ])
    assert (explicit.job_key, explicit.job_key_mode) == ("report", "replace")
    assert (default.job_key, default.job_key_mode) == ("cron:b", "unsafe_dedupe")
    assert (chosen.job_key, chosen.job_key_mode) == ("report-c", "unsafe_dedupe")


def test_parse_crontabs_removes_the_job_key_when_spec_job_key_is_none() -> None:
    [e] = parse_crontabs([{"identifier": "x", "schedule": "* * * * *",
                           "spec": {"job_key": None}}])
    assert e.job_key is None
    assert e.job_key_mode is None


def test_cron_entry_is_read_only_when_built() -> None:
    source = {"kind": "daily"}
    [e] = parse_crontabs([{"identifier": "x", "schedule": "@daily", "payload": source}])
    source["kind"] = "changed"
    assert e.payload["kind"] == "daily"
    with pytest.raises(TypeError):
        e.payload["kind"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.schedule = "* * * * *"  # type: ignore[misc]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"schedule": "61 * * * *"}, "schedule: '61 * * * *' is not a valid cron expression"),
    ({"schedule": "*/0 * * * *"}, "schedule: '*/0 * * * *' is not a valid cron expression"),
    ({"schedule": "0 0 30 2 *"}, "schedule: '0 0 30 2 *' is not a valid cron expression"),
    ({"schedule": "* * * *"}, "schedule: '* * * *' must have 5 fields"),
    ({"schedule": "* * * * * * *"}, "schedule: '* * * * * * *' must have 5 fields"),
    ({"schedule": "@reboot"}, "schedule: '@reboot': unknown macro"),
    ({"schedule": 5}, "schedule: must be a cron expression string, got int"),
    ({"schedule": None}, "schedule: missing"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone: unknown time zone 'Mars/Olympus_Mons'"),
    ({"timezone": "../../etc/passwd"}, "timezone: unknown time zone"),
    ({"backfill": "5x"}, "backfill: '5x' is not a window"),
    ({"backfill": "0s"}, "backfill: a window must be a positive duration"),
    ({"backfill": "1h1h"}, "backfill: '1h1h' gives the unit 'h' twice"),
    ({"backfill": True}, "backfill: expected a window"),
    ({"payload": [1, 2]}, "payload: must be an object (table/dict), got list"),
    ({"payload": "x"}, "payload: must be an object (table/dict), got str"),
    ({"payload": None}, "payload: must be an object (table/dict), got NoneType"),
    ({"payload": {"_cron": 1}}, "payload: '_cron' is reserved"),
    ({"payload": {"n": float("nan")}}, "payload: payload for task 'e' refused (field 'n')"),
    ({"payload": {"s": {1, 2}}}, "payload: payload for task 'e' refused"),
    ({"schedul": "* * * * *"}, "schedul: unknown key; did you mean 'schedule'?"),
    ({"task": ""}, "task: must be a string of 1 to 128 characters"),
    ({"spec": []}, "spec: must be a table/dict of job options, got list"),
    ({"spec": {"queue": "q"}}, "spec: queue: unknown job option; did you mean 'queue_name'?"),
    ({"spec": {"priority": 40000}}, "spec: job option 'priority': must be an integer from"),
    ({"spec": {"max_attempts": 0}}, "spec: job option 'max_attempts': must be an integer"),
    ({"spec": {"queue_name": ""}}, "spec: job option 'queue_name': must be None or a string"),
    ({"spec": {"job_key_mode": "keep"}}, "spec: job option 'job_key_mode': must be one of"),
    ({"spec": {"job_key": None, "job_key_mode": "replace"}},
     "spec: job_key_mode: has no meaning when job_key is None"),
    ({"spec": {"job_key": ""}}, "spec: job option 'job_key': must be None or a string"),
])
def test_parse_crontabs_names_entry_and_field_when_a_value_is_invalid(
        raw: dict[str, Any], expected: str) -> None:
    base: dict[str, Any] = {"identifier": "e", "schedule": "* * * * *"}
    problems = problems_of([{**base, **raw}])
    assert len(problems) == 1, problems
    assert problems[0].startswith("cron[0] 'e': "), problems
    assert expected in problems[0], problems


def test_parse_crontabs_names_entry_by_index_when_identifier_missing() -> None:
    assert problems_of([{"schedule": "* * * * *"}]) == [
        "cron[0]: identifier: missing; every entry needs a stable identifier"]


def test_parse_crontabs_refuses_duplicate_identifier_when_two_entries_share_it() -> None:
    problems = problems_of([{"identifier": "a", "schedule": "* * * * *"},
                            {"identifier": "b", "schedule": "* * * * *"},
                            {"identifier": "a", "schedule": "0 * * * *"}])
    assert problems == ["cron[2] 'a': identifier: duplicate of cron[0]"]


def test_parse_crontabs_lists_every_problem_when_several_entries_are_invalid() -> None:
    problems = problems_of([
        {"identifier": "ok", "schedule": "* * * * *"},
        {"identifier": "bad", "schedule": "*/0 * * * *", "timezone": "Nowhere/City",
         "backfill": "soon", "payload": [], "colour": "red"},
        {"schedule": "* * * * *"},
        "not a table",
    ])
    assert [p.split(":")[0] for p in problems] == [
        "cron[1] 'bad'", "cron[1] 'bad'", "cron[1] 'bad'", "cron[1] 'bad'", "cron[1] 'bad'",
        "cron[2]", "cron[3]"]
    joined = "\n".join(problems)
    for field in ("colour: unknown key", "schedule:", "timezone:", "backfill:", "payload:"):
        assert field in joined


def test_parse_crontabs_refuses_when_entries_is_not_a_list() -> None:
    with pytest.raises(ConfigError, match="cron: expected a list of entries, got dict"):
        parse_crontabs({"identifier": "x"})  # type: ignore[arg-type]


def test_parse_crontabs_accepts_macros_and_seconds_when_given() -> None:
    assert entry("@hourly").schedule == "@hourly"
    assert entry("* * * * * */10").schedule == "* * * * * */10"


def test_ensure_unique_refuses_when_identifiers_repeat_across_sources() -> None:
    a = entry("* * * * *")
    with pytest.raises(ConfigError, match="identifier 'e' is defined more than once"):
        ensure_unique([a, a])
    ensure_unique([a])


@pytest.mark.parametrize(("value", "seconds"), [
    ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0), ("1w", 604800.0),
    ("1d12h", 129600.0), ("1h 30m", 5400.0), ("1.5h", 5400.0), (90, 90.0), (0.5, 0.5),
])
def test_parse_window_returns_seconds_when_valid(value: object, seconds: float) -> None:
    assert parse_window(value) == seconds


@pytest.mark.parametrize("value", ["", "1", "h", "1y", "1h1h", "-1h", "0m", "1h foo", 0, -5,
                                   float("inf")])
def test_parse_window_raises_when_invalid(value: object) -> None:
    with pytest.raises(ValueError):
        parse_window(value)


@pytest.mark.parametrize("value", [None, True, [1]])
def test_parse_window_raises_type_error_when_not_text_or_number(value: object) -> None:
    with pytest.raises(TypeError):
        parse_window(value)


def test_load_crontab_file_builds_entries_when_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "crontab.toml"
    path.write_text(
        '[[cron]]\nidentifier = "daily-report"\nschedule = "0 2 * * *"\n'
        'spec = { queue_name = "maintenance", max_attempts = 3 }\n'
        '[[cron]]\nidentifier = "hourly-cleanup"\nschedule = "0 * * * *"\nbackfill = "2h"\n'
        'payload = { deep = true }\n', encoding="utf-8")
    daily, hourly = load_crontab_file(path)
    assert daily.identifier == "daily-report"
    assert dict(daily.spec) == {"queue_name": "maintenance", "max_attempts": 3}
    assert hourly.backfill == 7200.0
    assert dict(hourly.payload) == {"deep": True}


@pytest.mark.parametrize(("text", "expected"), [
    ("[[cron]\n", "not valid TOML"),
    ('[[cron]]\nidentifier = "x"\nschedule = "* * * * *"\n[worker]\nprocesses = 1\n',
     "worker: unknown key; a crontab file holds only [[cron]] tables"),
    ('cron = "x"\n', "cron: must be an array of tables"),
    ('[[cron]]\nidentifier = "x"\nschedule = "bad"\n', "cron[0] 'x': schedule:"),
])
def test_load_crontab_file_names_the_file_when_invalid(tmp_path: Path, text: str,
                                                        expected: str) -> None:
    path = tmp_path / "crontab.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_crontab_file(path)
    assert all(p.startswith(f"{path}: ") for p in info.value.problems)
    assert expected in str(info.value)


def test_load_crontab_file_raises_config_error_when_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the crontab file"):
        load_crontab_file(tmp_path / "absent.toml")


# --- time maths: UTC ----------------------------------------------------------------------------


def test_due_between_excludes_after_and_includes_until_when_both_on_ticks() -> None:
    e = entry("*/15 * * * *")
    assert due_between(e, at(2024, 1, 1, 0, 0), at(2024, 1, 1, 1, 0)) == [
        at(2024, 1, 1, 0, 15), at(2024, 1, 1, 0, 30), at(2024, 1, 1, 0, 45),
        at(2024, 1, 1, 1, 0)]


def test_due_between_returns_nothing_when_window_is_empty_or_reversed() -> None:
    e = entry("* * * * *")
    assert due_between(e, at(2024, 1, 1, 0, 0, 1), at(2024, 1, 1, 0, 0, 59)) == []
    assert due_between(e, at(2024, 1, 1, 1), at(2024, 1, 1, 0)) == []


def test_due_between_returns_utc_when_given_other_offsets() -> None:
    e = entry("0 12 * * *")
    plus2 = dt.timezone(dt.timedelta(hours=2))
    ticks = due_between(e, dt.datetime(2024, 1, 1, 0, tzinfo=plus2),
                        dt.datetime(2024, 1, 3, 0, tzinfo=plus2))
    assert ticks == [at(2024, 1, 1, 12), at(2024, 1, 2, 12)]
    assert all(t.tzinfo is UTC for t in ticks)


def test_due_between_raises_when_naive() -> None:
    with pytest.raises(ValueError, match="after must be timezone-aware"):
        due_between(entry("* * * * *"), dt.datetime(2024, 1, 1), at(2024, 1, 2))
    with pytest.raises(ValueError, match="until must be timezone-aware"):
        due_between(entry("* * * * *"), at(2024, 1, 1), dt.datetime(2024, 1, 2))


def test_due_between_uses_or_of_day_fields_when_both_restricted() -> None:
    # Standard cron: day-of-month and day-of-week restricted together match either.
    e = entry("0 0 13 * 5")
    ticks = due_between(e, at(2024, 9, 1), at(2024, 10, 1))
    assert [t.day for t in ticks] == [6, 13, 20, 27]


def test_next_tick_returns_first_tick_strictly_after_when_on_a_tick() -> None:
    e = entry("0 2 * * *")
    assert next_tick(e, at(2024, 1, 1, 2, 0)) == at(2024, 1, 2, 2, 0)
    assert next_tick(e, at(2024, 1, 1, 1, 59, 59, 999999)) == at(2024, 1, 1, 2, 0)


def test_due_between_fires_every_matching_second_when_schedule_has_six_fields() -> None:
    e = entry("* * * * * */15")
    assert due_between(e, at(2024, 1, 1, 0, 0, 0), at(2024, 1, 1, 0, 1, 0)) == [
        at(2024, 1, 1, 0, 0, 15), at(2024, 1, 1, 0, 0, 30), at(2024, 1, 1, 0, 0, 45),
        at(2024, 1, 1, 0, 1, 0)]
    assert next_tick(entry("30 2 * * * 10"), at(2024, 1, 1)) == at(2024, 1, 1, 2, 30, 10)


def test_due_between_follows_macro_when_schedule_is_a_macro() -> None:
    assert due_between(entry("@daily"), at(2024, 1, 1, 1), at(2024, 1, 3, 1)) == [
        at(2024, 1, 2), at(2024, 1, 3)]


# --- time maths: DST ----------------------------------------------------------------------------

# (zone, spring-forward day, fall-back day) of 2024.
DST_DAYS = [("Europe/Berlin", (2024, 3, 31), (2024, 10, 27)),
            ("America/New_York", (2024, 3, 10), (2024, 11, 3))]


def day_ticks(e: CronEntry, day: tuple[int, int, int]) -> list[dt.datetime]:
    """Ticks of ``e`` whose local date is ``day``."""
    zone = ZoneInfo(e.timezone)
    start = dt.datetime(*day, tzinfo=zone)
    end = start + dt.timedelta(days=1)
    return [t for t in due_between(e, start - dt.timedelta(days=1), end + dt.timedelta(days=1))
            if t.astimezone(zone).date() == start.date()]


@pytest.mark.parametrize(("zone", "spring", "fall"), DST_DAYS)
def test_fixed_time_schedule_fires_once_every_day_when_clocks_change(
        zone: str, spring: tuple[int, int, int], fall: tuple[int, int, int]) -> None:
    e = entry("30 2 * * *", zone)
    for day in (spring, fall):
        start = dt.date(*day) - dt.timedelta(days=3)
        for n in range(7):
            d = start + dt.timedelta(days=n)
            assert len(day_ticks(e, (d.year, d.month, d.day))) == 1, d


def test_gap_tick_runs_at_first_valid_instant_when_berlin_springs_forward() -> None:
    e = entry("30 2 * * *", "Europe/Berlin")
    ticks = due_between(e, at(2024, 3, 30), at(2024, 4, 2))
    assert ticks == [at(2024, 3, 30, 1, 30), at(2024, 3, 31, 1, 0), at(2024, 4, 1, 0, 30)]
    assert local(ticks, "Europe/Berlin") == [
        "03-30 02:30+0100", "03-31 03:00+0200", "04-01 02:30+0200"]


def test_gap_tick_runs_at_first_valid_instant_when_new_york_springs_forward() -> None:
    e = entry("30 2 * * *", "America/New_York")
    ticks = due_between(e, at(2024, 3, 9), at(2024, 3, 12))
    assert local(ticks, "America/New_York") == [
        "03-09 02:30-0500", "03-10 03:00-0400", "03-11 02:30-0400"]


def test_overlap_tick_runs_once_at_first_occurrence_when_berlin_falls_back() -> None:
    e = entry("30 2 * * *", "Europe/Berlin")
    ticks = due_between(e, at(2024, 10, 26), at(2024, 10, 29))
    assert ticks == [at(2024, 10, 26, 0, 30), at(2024, 10, 27, 0, 30), at(2024, 10, 28, 1, 30)]
    assert local(ticks, "Europe/Berlin") == [
        "10-26 02:30+0200", "10-27 02:30+0200", "10-28 02:30+0100"]
    # Asked from inside the second pass of the repeated hour: it already ran in the first.
    assert due_between(e, at(2024, 10, 27, 1, 10), at(2024, 10, 27, 1, 50)) == []
    assert next_tick(e, at(2024, 10, 27, 0, 30)) == at(2024, 10, 28, 1, 30)


def test_overlap_tick_runs_once_when_new_york_falls_back() -> None:
    # In New York the repeated hour is 01:00-02:00, so 02:30 is unambiguous and 01:30 is not.
    assert local(due_between(entry("30 2 * * *", "America/New_York"), at(2024, 11, 2),
                             at(2024, 11, 5)), "America/New_York") == [
        "11-02 02:30-0400", "11-03 02:30-0500", "11-04 02:30-0500"]
    assert local(due_between(entry("30 1 * * *", "America/New_York"), at(2024, 11, 2),
                             at(2024, 11, 5)), "America/New_York") == [
        "11-02 01:30-0400", "11-03 01:30-0400", "11-04 01:30-0500"]


@pytest.mark.parametrize(("zone", "spring", "fall"), DST_DAYS)
def test_interval_schedule_keeps_real_time_spacing_when_clocks_change(
        zone: str, spring: tuple[int, int, int], fall: tuple[int, int, int]) -> None:
    e = entry("*/15 * * * *", zone)
    for day, hours in ((spring, 23), (fall, 25)):
        ticks = day_ticks(e, day)
        assert len(ticks) == hours * 4
        assert {b - a for a, b in itertools.pairwise(ticks)} == {
            dt.timedelta(minutes=15)}
    hourly = entry("0 * * * *", zone)
    assert len(day_ticks(hourly, spring)) == 23
    assert len(day_ticks(hourly, fall)) == 25


def test_interval_schedule_fires_second_pass_when_asked_from_inside_the_first() -> None:
    # From 02:10 CEST (first pass of Berlin's repeated hour), the next ticks include 02:00 CET
    # (second pass) even though that wall time precedes 02:10.
    e = entry("*/15 * * * *", "Europe/Berlin")
    ticks = due_between(e, at(2024, 10, 27, 0, 10), at(2024, 10, 27, 1, 20))
    assert local(ticks, "Europe/Berlin") == [
        "10-27 02:15+0200", "10-27 02:30+0200", "10-27 02:45+0200", "10-27 02:00+0100",
        "10-27 02:15+0100"]
    assert next_tick(e, at(2024, 10, 27, 0, 50)) == at(2024, 10, 27, 1, 0)


def test_gap_ticks_collapse_into_one_when_several_fall_in_the_gap() -> None:
    e = entry("*/20 2 * * *", "Europe/Berlin")  # 02:00, 02:20, 02:40: all in the gap
    assert local(day_ticks(e, (2024, 3, 31)), "Europe/Berlin") == ["03-31 03:00+0200"]


def test_interval_property_is_true_when_minute_or_hour_field_is_a_wildcard() -> None:
    assert entry("*/15 * * * *").interval
    assert entry("0 * * * *").interval
    assert entry("@hourly").interval
    assert entry("5 */2 * * *").interval
    assert not entry("30 2 * * *").interval
    assert not entry("@daily").interval
    assert not entry("0,30 1-3 * * *").interval


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]
SCHEDULES = ["*/15 * * * *", "30 2 * * *", "30 1 * * *", "0 * * * *", "*/7 1-3 * * *",
             "0 0 * * *", "45 23 * * 6", "* 2 * * * */20"]


def transitions(zone: str) -> list[dt.datetime]:
    """The instants (to the hour) at which ``zone`` changed offset in 2024-2025."""
    tz = ZoneInfo(zone)
    hours = [at(2024, 1, 1) + dt.timedelta(hours=h) for h in range(2 * 366 * 24)]
    return [b for a, b in itertools.pairwise(hours)
            if a.astimezone(tz).utcoffset() != b.astimezone(tz).utcoffset()]


TRANSITIONS = sorted({t for zone in ZONES for t in transitions(zone)})


@st.composite
def starts(draw: st.DrawFn) -> dt.datetime:
    """Instants in 2024-2025, half of them within two days of some zone's clock change."""
    if draw(st.booleans()):
        base = draw(st.sampled_from(TRANSITIONS))
        return base + dt.timedelta(seconds=draw(st.integers(-2 * 86400, 86400)))
    return draw(st.datetimes(min_value=dt.datetime(2024, 1, 1),
                             max_value=dt.datetime(2025, 12, 1), timezones=st.just(UTC)))


@settings(max_examples=400, deadline=None)
@given(zone=st.sampled_from(ZONES), schedule=st.sampled_from(SCHEDULES), start=starts(),
       split=st.floats(min_value=0.0, max_value=1.0),
       span=st.one_of(st.integers(1, 3 * 3600), st.integers(1, 3 * 86400)))
def test_due_between_is_consistent_when_windows_are_split(
        zone: str, schedule: str, start: dt.datetime, split: float, span: int) -> None:
    e = entry(schedule, zone)
    end = start + dt.timedelta(seconds=span)
    middle = start + dt.timedelta(seconds=span * split)
    whole = due_between(e, start, end)
    assert whole == due_between(e, start, middle) + due_between(e, middle, end)
    assert all(start < t <= end for t in whole)
    assert whole == sorted(set(whole))
    if whole:
        assert next_tick(e, start) == whole[0]
        assert next_tick(e, middle) == next((t for t in whole if t > middle),
                                            next_tick(e, middle))
    tz = ZoneInfo(zone)
    walls = [t.astimezone(tz).replace(tzinfo=None) for t in whole]
    if not e.interval:
        assert len(set(walls)) == len(walls), "a fixed-time wall time fired twice"
    for t, wall in zip(whole, walls, strict=True):
        # A tick is a wall time matching the schedule, or the end of a gap.
        gap_end = (t - dt.timedelta(seconds=1)).astimezone(tz).utcoffset() != \
            t.astimezone(tz).utcoffset()
        assert croniter.match(schedule, wall) or gap_end, (t, wall)
