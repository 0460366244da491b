"""Cron entries and their time maths. Pure: no I/O, no clock (every instant is passed in).

An entry, as written in ``skivi.toml`` (``[[cron]]`` tables), a crontab file given with
``--crontab PATH`` (the same tables, nothing else) or the ``crontabs`` list of
``create_system``::

    {"identifier": "daily-report",        # required, stable: it keys last_execution
     "schedule": "0 2 * * *",             # 5 fields, or 6 with seconds last; @daily etc.
     "task": "daily-report",              # default: the identifier
     "payload": {"kind": "daily"},        # an object; default {}
     "timezone": "Europe/Berlin",         # IANA name; default "UTC"
     "backfill": "1h",                    # window; default none
     "spec": {"queue_name": "maintenance", "priority": 0, "max_attempts": 3,
              "job_key": "...", "job_key_mode": "unsafe_dedupe"}}

:func:`parse_crontabs` checks every entry and raises one :class:`~skivi.errors.ConfigError`
listing every problem, each naming its entry by position and identifier. Renaming an
identifier makes a new entry (never backfilled) and orphans the old one's history, as in
Graphile Worker.

Job key. Unless ``spec.job_key`` says otherwise, every fire of an entry carries the job key
``cron:<identifier>`` in ``unsafe_dedupe`` mode: while the previous run's job is still queued,
retrying or running, a new fire adds nothing (the scheduler reports it as skipped). Completed
jobs are deleted, which frees the key. An explicit ``spec.job_key`` without
``spec.job_key_mode`` uses ``replace``, the default of every other job option (and of
Graphile Worker's ``?jobKey=``): a new fire replaces the previous run's job while it waits
(the 8 am tick's job takes the place of a 4 am job still queued or retrying), and a running
one loses its key and is not retried. ``spec.job_key = None`` (in code; TOML has no null)
removes the key, so every fire enqueues a job even while earlier ones wait.

Backfill. ``backfill`` is a window such as ``"30s"``, ``"15m"``, ``"1h"``, ``"2d"``, ``"1w"``
(units may be combined: ``"1d12h"``) or a number of seconds. After downtime, the scheduler
fires the missed ticks that fall inside the window, oldest first; older ones are skipped.

Time zones and DST. A schedule is matched against the entry's local wall clock, and each
matching wall-clock time becomes one UTC instant (a *tick*):

- **spring forward (gap)**: a wall time that does not exist that day (02:30 when clocks jump
  from 02:00 to 03:00) fires once, at the first valid instant after the gap (03:00 local);
  several ticks that land on the same instant fire once;
- **fall back (overlap)**: a wall time that occurs twice (02:30 when clocks go from 03:00 back
  to 02:00) fires once, at its first occurrence, for a *fixed-time* schedule (minute and hour
  fields without ``*``, e.g. ``30 2 * * *``); an *interval* schedule (minute or hour field
  starting with ``*``, e.g. ``*/15 * * * *``, ``0 * * * *``) fires at both occurrences, so it
  keeps its real-time spacing through the repeated hour. This is cronie's rule.

So ``30 2 * * *`` in Europe/Berlin or America/New_York runs exactly once every day of the
year, and ``*/15 * * * *`` runs every 15 real minutes through both changes. croniter alone
does not give this (it fires Berlin's 02:30 twice on the fall-back day), so croniter is only
asked for wall-clock times, in a zone without DST, and this module maps them to instants.
The default zone, UTC, has no DST at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import re
import sys
import tomllib
import types
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from croniter import croniter

from skivi.errors import ConfigError, JobSpecError, PayloadError, shown
from skivi.job import TASK_IDENTIFIER_MAX, JobKeyMode, JobSpec
from skivi.payload import encode

__all__ = [
    "CronEntry",
    "due_between",
    "ensure_unique",
    "load_crontab_file",
    "next_tick",
    "parse_crontabs",
    "parse_window",
]

UTC = dt.UTC

ENTRY_KEYS = ("backfill", "identifier", "payload", "schedule", "spec", "task", "timezone")
SPEC_KEYS = ("job_key", "job_key_mode", "max_attempts", "priority", "queue_name")
JOB_KEY_PREFIX = "cron:"
# An explicit spec.job_key behaves as it does for any job; only the entry's own key, which
# exists to keep one run at a time, deduplicates.
JOB_KEY_MODE_DEFAULT = JobKeyMode.REPLACE.value
ENTRY_KEY_MODE_DEFAULT = JobKeyMode.UNSAFE_DEDUPE.value
TIMEZONE_DEFAULT = "UTC"
RESERVED_PAYLOAD_KEY = "_cron"

# Longest clock change any zone has had (double summer time); bounds how far back from an
# instant the wall-clock walk must start to see every tick of a repeated hour.
_MAX_SHIFT = dt.timedelta(hours=3)
_MACROS = {
    "@annually": "0 0 1 1 *",
    "@daily": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@midnight": "0 0 * * *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@yearly": "0 0 1 1 *",
}
_WINDOW_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_WINDOW_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([wdhms])\s*")
# A fixed instant from which each schedule is asked for one tick at parse time, so a
# schedule that can never fire ("0 0 30 2 *") is refused at start, not in the scheduler.
_PROBE_FROM = dt.datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class CronEntry:
    """One cron entry, validated. Build entries with :func:`parse_crontabs`.

    ``payload`` and ``spec`` are read-only mappings; ``spec`` holds only the options given
    (see :attr:`job_key` / :attr:`job_key_mode` for the effective key).
    """

    identifier: str
    schedule: str
    task: str
    payload: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), hash=False)
    timezone: str = TIMEZONE_DEFAULT
    backfill: float | None = None
    """Seconds: missed ticks at most this old are fired after downtime. None: no backfill."""
    spec: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}), hash=False)

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    @property
    def job_key(self) -> str | None:
        """``spec.job_key`` if given (None: no key), else ``cron:<identifier>``."""
        if "job_key" in self.spec:
            key: str | None = self.spec["job_key"]
            return key
        return JOB_KEY_PREFIX + self.identifier

    @property
    def job_key_mode(self) -> str | None:
        """``spec.job_key_mode`` if given; else ``replace`` (:data:`JOB_KEY_MODE_DEFAULT`)
        for an explicit ``spec.job_key``, ``unsafe_dedupe`` (:data:`ENTRY_KEY_MODE_DEFAULT`)
        for the default ``cron:<identifier>``; None when there is no key."""
        if self.job_key is None:
            return None
        if "job_key_mode" in self.spec:
            return str(self.spec["job_key_mode"])
        return JOB_KEY_MODE_DEFAULT if "job_key" in self.spec else ENTRY_KEY_MODE_DEFAULT

    @property
    def interval(self) -> bool:
        """Whether the schedule is an interval one (keeps real-time spacing across DST)."""
        fields = _fields(self.schedule)
        return fields[0].startswith("*") or fields[1].startswith("*")


# --- parsing ------------------------------------------------------------------------------------


def parse_window(value: object) -> float:
    """A backfill window in seconds: ``"30s"``, ``"15m"``, ``"1h"``, ``"2d"``, ``"1w"``, a
    combination (``"1d12h"``, each unit once), or a positive number of seconds.

    Raises:
        TypeError: the value is neither a string nor a number.
        ValueError: the value is not such a window.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected a window like '15m' or '2d', or seconds; got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        seconds = 0.0
        seen: set[str] = set()
        pos = 0
        while pos < len(value):
            match = _WINDOW_PART.match(value, pos)
            if match is None or match.end() == pos:
                break
            number, unit = match.groups()
            if unit in seen:
                raise ValueError(f"{value!r} gives the unit {unit!r} twice")
            seen.add(unit)
            seconds += float(number) * _WINDOW_UNITS[unit]
            pos = match.end()
        if not seen or pos != len(value):
            raise ValueError(f"{value!r} is not a window like '30s', '15m', '1h', '2d', '1w' "
                             "or '1d12h'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a window must be a positive duration, got {value!r}")
    return seconds


def parse_crontabs(entries: Sequence[Mapping[str, Any]], *, source: str = "cron"
                   ) -> list[CronEntry]:
    """Validate raw entries (dicts shaped like ``[[cron]]`` tables) and build them.

    ``source`` prefixes every message (``cron[2] 'nightly': schedule: ...``).

    Raises:
        ConfigError: listing every problem of every entry, identifier duplicates included.
    """
    problems: list[str] = []
    built: list[CronEntry] = []
    first_seen: dict[str, int] = {}
    if isinstance(entries, str | bytes | Mapping) or not isinstance(entries, Sequence):
        raise ConfigError(f"{source}: expected a list of entries, got {type(entries).__name__}")
    for index, raw in enumerate(entries):
        entry, entry_problems = _parse_entry(raw, index, source)
        problems.extend(entry_problems)
        identifier = raw.get("identifier") if isinstance(raw, Mapping) else None
        if isinstance(identifier, str):
            earlier = first_seen.setdefault(identifier, index)
            if earlier != index:
                problems.append(f"{_label(source, index, identifier)}: identifier: "
                                f"duplicate of {source}[{earlier}]")
        if entry is not None:
            built.append(entry)
    if problems:
        raise ConfigError(problems)
    return built


def ensure_unique(entries: Sequence[CronEntry]) -> None:
    """Refuse two entries with one identifier (e.g. one from skivi.toml, one from a file).

    Raises:
        ConfigError: naming every duplicated identifier.
    """
    seen: set[str] = set()
    duplicates: list[str] = []
    for entry in entries:
        if entry.identifier in seen and entry.identifier not in duplicates:
            duplicates.append(entry.identifier)
        seen.add(entry.identifier)
    if duplicates:
        raise ConfigError([f"cron: identifier {shown(d)} is defined more than once"
                           for d in duplicates])


def load_crontab_file(path: str | Path) -> list[CronEntry]:
    """Read a TOML file of ``[[cron]]`` tables (nothing else) and build its entries.

    Raises:
        ConfigError: the file cannot be read or parsed, or its entries are invalid; every
            message starts with the path.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the crontab file: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    problems = [f"{p}: {key}: unknown key; a crontab file holds only [[cron]] tables"
                for key in sorted(data) if key != "cron"]
    tables = data.get("cron", [])
    if not isinstance(tables, list):
        problems.append(f"{p}: cron: must be an array of tables ([[cron]])")
        tables = []
    try:
        entries = parse_crontabs(tables, source=f"{p}: cron")
    except ConfigError as exc:
        problems.extend(exc.problems)
        entries = []
    if problems:
        raise ConfigError(problems)
    return entries


def _label(source: str, index: int, identifier: object) -> str:
    if isinstance(identifier, str) and identifier:
        return f"{source}[{index}] {shown(identifier)}"
    return f"{source}[{index}]"


def _parse_entry(raw: object, index: int, source: str) -> tuple[CronEntry | None, list[str]]:
    if not isinstance(raw, Mapping):
        return None, [f"{source}[{index}]: expected a table/dict, got {type(raw).__name__}"]
    label = _label(source, index, raw.get("identifier"))
    problems: list[str] = []

    def refuse(key: str, message: str) -> None:
        problems.append(f"{label}: {key}: {message}")

    for key in raw:
        if key not in ENTRY_KEYS:
            refuse(str(key), _unknown("key", str(key), ENTRY_KEYS))

    identifier = raw.get("identifier")
    if identifier is None:
        refuse("identifier", "missing; every entry needs a stable identifier")
    elif not _is_name(identifier, TASK_IDENTIFIER_MAX):
        # A task identifier's limit: the identifier is the default task.
        refuse("identifier", f"must be a string of 1 to {TASK_IDENTIFIER_MAX} characters "
                             f"without NUL, got {shown(identifier)}")
    ident = identifier if isinstance(identifier, str) else ""

    schedule = raw.get("schedule")
    if schedule is None:
        refuse("schedule", "missing")
    else:
        error = _schedule_error(schedule)
        if error:
            refuse("schedule", error)

    task = raw.get("task", identifier)
    if "task" in raw and not _is_name(task, TASK_IDENTIFIER_MAX):
        refuse("task", f"must be a string of 1 to {TASK_IDENTIFIER_MAX} characters without "
                       f"NUL, got {shown(task)}")

    timezone = raw.get("timezone", TIMEZONE_DEFAULT)
    if not isinstance(timezone, str) or not _zone_exists(timezone):
        refuse("timezone", f"unknown time zone {shown(timezone)}; expected an IANA name such as "
                           "'UTC' or 'Europe/Berlin'")

    backfill: float | None = None
    if raw.get("backfill") is not None:
        try:
            backfill = parse_window(raw["backfill"])
        except (TypeError, ValueError) as exc:
            refuse("backfill", str(exc))

    payload = raw.get("payload", {})
    frozen_payload: Mapping[str, Any] = types.MappingProxyType({})
    if not isinstance(payload, Mapping):
        refuse("payload", f"must be an object (table/dict), got {type(payload).__name__}")
    elif RESERVED_PAYLOAD_KEY in payload:
        refuse("payload", f"{RESERVED_PAYLOAD_KEY!r} is reserved: the scheduler sets it to "
                          "the tick's time")
    else:
        try:
            # Round-tripped through JSON: the entry then holds exactly what will be stored,
            # as a private copy the caller cannot change afterwards.
            data = encode(ident or f"cron[{index}]", _thaw(payload), sys.maxsize)
            frozen_payload = types.MappingProxyType(orjson.loads(data))
        except PayloadError as exc:
            refuse("payload", str(exc))

    spec = raw.get("spec", {})
    frozen_spec: Mapping[str, Any] = types.MappingProxyType({})
    if not isinstance(spec, Mapping):
        refuse("spec", f"must be a table/dict of job options, got {type(spec).__name__}")
    else:
        for message in _spec_problems(spec, task if isinstance(task, str) else ""):
            refuse("spec", message)
        frozen_spec = types.MappingProxyType(dict(spec))

    if problems:
        return None, problems
    return CronEntry(identifier=ident, schedule=str(schedule).strip(), task=str(task),
                     payload=frozen_payload, timezone=str(timezone), backfill=backfill,
                     spec=frozen_spec), []


def _thaw(value: object) -> object:
    """Plain dicts for read-only mappings (a frozen config's tables), which orjson refuses."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _unknown(what: str, key: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {match[0]!r}?" if match else f"; expected one of {', '.join(known)}"
    return f"unknown {what}{hint}"


def _is_name(value: object, limit: int) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: PostgreSQL text cannot hold them
        return False
    return True


def _zone_exists(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _fields(schedule: str) -> list[str]:
    text = schedule.strip()
    return _MACROS.get(text.lower(), text).split()


def _schedule_error(schedule: object) -> str | None:
    if not isinstance(schedule, str):
        return f"must be a cron expression string, got {type(schedule).__name__}"
    text = schedule.strip()
    if text.startswith("@") and text.lower() not in _MACROS:
        return (f"{shown(schedule)}: unknown macro; expected one of {', '.join(sorted(_MACROS))} "
                "(@reboot has no meaning for a shared schedule)")
    if len(_fields(text)) not in (5, 6):
        return (f"{shown(schedule)} must have 5 fields (minute hour day month weekday), or 6 with "
                "seconds last")
    try:
        croniter(" ".join(_fields(text)), _PROBE_FROM).get_next(dt.datetime)
    except (ValueError, KeyError, TypeError) as exc:  # croniter's errors are ValueErrors
        return f"{shown(schedule)} is not a valid cron expression: {exc}"
    return None


def _spec_problems(spec: Mapping[str, Any], task: str) -> list[str]:
    problems: list[str] = []
    for key in spec:
        if key not in SPEC_KEYS:
            problems.append(f"{key}: {_unknown('job option', str(key), SPEC_KEYS)}")
    # Each option is checked on its own so that every bad one is reported, not the first.
    for key in ("max_attempts", "priority", "queue_name"):
        if key in spec:
            problems.extend(_job_option_problem(task, {key: spec[key]}))
    if "job_key" in spec and spec["job_key"] is not None:
        problems.extend(_job_option_problem(task, {"job_key": spec["job_key"]}))
    if "job_key_mode" in spec:
        if "job_key" in spec and spec["job_key"] is None:
            problems.append("job_key_mode: has no meaning when job_key is None (no key)")
        else:
            problems.extend(_job_option_problem(
                task, {"job_key": "k", "job_key_mode": spec["job_key_mode"]}))
    return problems


def _job_option_problem(task: str, options: dict[str, Any]) -> list[str]:
    try:
        JobSpec(task=task or "cron", **options).check()
    except JobSpecError as exc:
        return [str(exc).replace(f" for task {shown(task or 'cron')}", "")]
    return []


# --- time maths ---------------------------------------------------------------------------------


def due_between(entry: CronEntry, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """The ticks ``t`` of ``entry`` with ``after < t <= until``, oldest first, as UTC
    datetimes, with the module's DST policy applied.

    Raises:
        ValueError: ``after`` or ``until`` is naive.
    """
    after, until = _utc(after, "after"), _utc(until, "until")
    ticks: list[dt.datetime] = []
    for tick in _ticks(entry, after):
        if tick > until:
            break
        ticks.append(tick)
    return ticks


def next_tick(entry: CronEntry, after: dt.datetime) -> dt.datetime:
    """The first tick of ``entry`` strictly after ``after``, as a UTC datetime.

    Raises:
        ValueError: ``after`` is naive.
    """
    return next(_ticks(entry, _utc(after, "after")))


def _utc(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def _ticks(entry: CronEntry, after: dt.datetime) -> Iterator[dt.datetime]:
    """Ticks strictly after ``after`` (UTC), oldest first, each instant once.

    The instants come out in non-decreasing order (a gap maps several wall times to one
    instant, and an overlap's second pass is emitted after its first), so callers may stop
    at the first tick past their bound.
    """
    zone = entry.zone
    start = after
    offsets = {(after + k * _MAX_SHIFT).astimezone(zone).utcoffset() for k in (-1, 0, 1)}
    if len(offsets) > 1:
        # A clock change is near: in an overlap, a wall time *before* after's own wall time
        # may still have a second occurrence after ``after``; begin the walk early enough.
        start = after - _MAX_SHIFT
    last: dt.datetime | None = None
    for tick in _instants(entry, zone, _naive_wall(start, zone)):
        if tick > after and tick != last:
            last = tick
            yield tick


def _naive_wall(instant: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _walls(schedule: str, start: dt.datetime) -> Iterator[dt.datetime]:
    """Naive wall-clock times matching ``schedule`` strictly after ``start``. croniter runs
    in UTC, a zone without DST, so this is pure calendar arithmetic."""
    it = croniter(" ".join(_fields(schedule)), start.replace(tzinfo=UTC))
    while True:
        wall: dt.datetime = it.get_next(dt.datetime)
        yield wall.replace(tzinfo=None)


def _instants(entry: CronEntry, zone: zoneinfo.ZoneInfo, start: dt.datetime
              ) -> Iterator[dt.datetime]:
    interval = entry.interval
    walls = _walls(entry.schedule, start)
    pending: dt.datetime | None = None
    while True:
        wall = pending if pending is not None else next(walls)
        pending = None
        first, second = _occurrences(wall, zone)
        if second is None:
            yield first
            continue
        if not interval:
            yield first
            continue
        # An interval schedule in a repeated hour: every wall time of that hour, first pass,
        # then every one again in the second pass, so the instants stay in order.
        group = [(first, second)]
        for following in walls:
            a, b = _occurrences(following, zone)
            if b is None or following - wall >= _MAX_SHIFT:
                pending = following
                break
            group.append((a, b))
        yield from (a for a, _ in group)
        yield from (b for _, b in group if b is not None)


def _occurrences(wall: dt.datetime, zone: zoneinfo.ZoneInfo
                 ) -> tuple[dt.datetime, dt.datetime | None]:
    """The instant(s) of a naive wall time in ``zone``: (instant, None) normally; (first,
    second) in an overlap; (first valid instant after the gap, None) in a gap."""
    early = wall.replace(tzinfo=zone, fold=0)
    late = wall.replace(tzinfo=zone, fold=1)
    if early.utcoffset() == late.utcoffset():
        return early.astimezone(UTC), None
    a, b = early.astimezone(UTC), late.astimezone(UTC)
    if _naive_wall(a, zone) == wall:
        # Overlap: fold=0 is the first occurrence (PEP 495), fold=1 the second.
        return a, b
    return _transition(min(a, b), max(a, b), zone), None


def _transition(low: dt.datetime, high: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The instant in (low, high] at which ``zone`` takes high's offset: the end of a gap.
    Offsets change on whole seconds, so bisecting seconds finds it exactly."""
    target = high.astimezone(zone).utcoffset()
    lo, hi = 0, int((high - low).total_seconds())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (low + dt.timedelta(seconds=mid)).astimezone(zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return low + dt.timedelta(seconds=hi)
