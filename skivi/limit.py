"""Concurrency and rate limits by key: what a limit is, and how one is declared.

A limit is pure data. Engines record the limits their configuration declares in the database
at start (``job_limit_upsert_many.sql``) and the claim enforces them there
(``job_claim_limited.sql``), so a limit holds across the whole fleet::

    [[limits]]
    name = "per-tenant"
    tasks = ["sync_account", "send_report"]
    key = "tenant_id"          # a payload field path ("account.id"); omitted: the task
    concurrency = 2            # at most 2 jobs of one tenant running at once

    [[limits]]
    name = "crm-api"
    tasks = ["sync_account"]
    rate = "10/s"              # at most 10 starts in any 1 s window, per key

or on a typed task, for that task: ``@TASKS.task(limits=[skivi.Limit("per-tenant",
key="tenant_id", concurrency=2)])``. A limit named the same way by several tasks (and by
the configuration) is one limit over all their tasks, if the rest of it is the same.

Semantics: ``concurrency = N`` is at most N jobs with the same key running at once (claimed
and not yet finished, failed or released). ``rate = "N/period"`` is at most N starts (claims)
per key in any sliding window of one period; every start counts, whatever its outcome.
Periods: ``s``, ``m``, ``h``, ``d`` (also ``second``, ``min``, ``minute``, ``hour``,
``day``), optionally with a count (``"100/10s"``, ``"5/15min"``). N is at most
``SLOTS_MAX`` (a key's row holds its N running jobs, or its last N starts). A job whose
payload lacks the key's field shares the key ``""`` with the others that lack it. Limits
apply to jobs without a queue (the parallel queue); a serial queue's jobs are bound by their
queue, one at a time, and not counted.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skivi.errors import ConfigError, shown

__all__ = ["SLOTS_MAX", "Limit", "merge_limits", "parse_limits", "parse_rate"]

SLOTS_MAX = 10_000
"""The largest concurrency or rate count (a key's row holds that many jobs or starts)."""

NAME_MAX = 128

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+?)s?\s*$")
_KEYS = ("concurrency", "key", "name", "rate", "tasks")


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit. ``tasks`` may be left empty on a typed task's option (it is that task)."""

    name: str
    tasks: tuple[str, ...] = ()
    key: str | None = None
    """The payload field path, dot-separated (``"tenant_id"``, ``"account.id"``); None: the
    task identifier. Default: None."""
    concurrency: int | None = None
    rate: str | None = None

    def __post_init__(self) -> None:
        problems = _check(self.name, self.tasks, self.key, self.concurrency, self.rate,
                          tasks_required=False)
        if problems:
            raise ValueError(f"limit {shown(self.name)}: " + "; ".join(problems))

    @property
    def slots(self) -> int:
        """What one key allows: the concurrency, or the rate's count."""
        if self.concurrency is not None:
            return self.concurrency
        assert self.rate is not None
        return parse_rate(self.rate)[0]

    @property
    def period(self) -> float | None:
        """The rate's window in seconds; None for a concurrency limit."""
        return None if self.rate is None else parse_rate(self.rate)[1]

    @property
    def key_path(self) -> list[str] | None:
        return None if self.key is None else self.key.split(".")

    def same_rule(self, other: Limit) -> bool:
        return (self.key, self.concurrency, self.rate) == (other.key, other.concurrency,
                                                           other.rate)


def parse_rate(text: str) -> tuple[int, float]:
    """``"10/s"`` -> (10, 1.0); ``"100/15min"`` -> (100, 900.0).

    Raises:
        ValueError: naming what is wrong.
    """
    m = _RATE.match(text.lower()) if isinstance(text, str) else None
    if m is None or m.group(3) not in _PERIODS:
        raise ValueError(f"expected \"N/period\" such as \"10/s\", \"100/10s\" or \"5/min\" "
                         f"(periods: s, m, h, d), got {shown(text)}")
    count = int(m.group(1))
    period = float(m.group(2) or 1) * _PERIODS[m.group(3)]
    if not 1 <= count <= SLOTS_MAX:
        raise ValueError(f"the count must be between 1 and {SLOTS_MAX}, got {count}")
    if period <= 0:
        raise ValueError("the period must be longer than 0")
    return count, period


def _check(name: Any, tasks: Any, key: Any, concurrency: Any, rate: Any, *,
           tasks_required: bool) -> list[str]:
    problems: list[str] = []
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX:
        problems.append(f"name: expected a string of 1 to {NAME_MAX} characters, got "
                        f"{shown(name)}")
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not all(
            isinstance(t, str) and t for t in tasks):
        problems.append(f"tasks: expected a list of task identifiers, got {shown(tasks)}")
    elif tasks_required and not tasks:
        problems.append("tasks: expected at least one task identifier")
    if key is not None and (not isinstance(key, str) or not all(key.split("."))):
        problems.append(f"key: expected a payload field path such as \"tenant_id\" or "
                        f"\"account.id\", got {shown(key)}")
    if (concurrency is None) == (rate is None):
        problems.append("expected exactly one of concurrency and rate")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(
            concurrency, int) or not 1 <= concurrency <= SLOTS_MAX):
        problems.append(f"concurrency: expected an integer from 1 to {SLOTS_MAX}, got "
                        f"{shown(concurrency)}")
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as exc:
            problems.append(f"rate: {exc}")
    return problems


def parse_limits(entries: Sequence[Mapping[str, Any]], *, source: str = "limits"
                 ) -> list[Limit]:
    """Validate raw entries (dicts shaped like ``[[limits]]`` tables) and build them.

    Raises:
        ConfigError: listing every problem of every entry (``limits[1] 'api': rate: ...``),
            duplicate names included.
    """
    if isinstance(entries, str | bytes | Mapping) or not isinstance(entries, Sequence):
        raise ConfigError(f"{source}: expected a list of tables, got {type(entries).__name__}")
    problems: list[str] = []
    built: list[Limit] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(entries):
        label = f"{source}[{index}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{label}: expected a table, got {shown(raw)}")
            continue
        name = raw.get("name")
        if isinstance(name, str):
            label += f" {name!r}"
        entry_problems = [f"{label}: {p}" for p in _unknown_keys(raw)]
        entry_problems += [f"{label}: {p}" for p in _check(
            name, raw.get("tasks"), raw.get("key"), raw.get("concurrency"), raw.get("rate"),
            tasks_required=True)]
        if isinstance(name, str):
            earlier = seen.setdefault(name, index)
            if earlier != index:
                entry_problems.append(f"{label}: name: duplicate of {source}[{earlier}]")
        problems.extend(entry_problems)
        if not entry_problems:
            built.append(Limit(name=raw["name"], tasks=tuple(raw["tasks"]), key=raw.get("key"),
                               concurrency=raw.get("concurrency"), rate=raw.get("rate")))
    if problems:
        raise ConfigError(problems)
    return built


def _unknown_keys(raw: Mapping[str, Any]) -> list[str]:
    problems = []
    for k in raw:
        if k not in _KEYS:
            match = difflib.get_close_matches(str(k), _KEYS, n=1)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            problems.append(f"{k}: unknown key{hint}")
    return problems


def merge_limits(configured: Iterable[Limit],
                 by_task: Mapping[str, Iterable[Limit]]) -> list[Limit]:
    """One list of limits from the configuration's and the tasks' (``limits=`` on a typed
    task: its tasks are that task). Limits of one name are one limit over all their tasks.

    Raises:
        ConfigError: when two limits of one name differ in key, concurrency or rate.
    """
    merged: dict[str, Limit] = {}
    problems: list[str] = []

    def add(limit: Limit, where: str) -> None:
        known = merged.get(limit.name)
        if known is None:
            merged[limit.name] = limit
        elif not known.same_rule(limit):
            problems.append(f"limit {limit.name!r} ({where}) differs from the limit of that "
                            f"name declared before: {_rule(limit)} against {_rule(known)}")
        else:
            tasks = tuple(dict.fromkeys([*known.tasks, *limit.tasks]))
            merged[limit.name] = dataclasses.replace(known, tasks=tasks)

    for limit in configured:
        add(limit, "configuration")
    for task, limits in sorted(by_task.items()):
        for limit in limits:
            add(dataclasses.replace(limit, tasks=tuple(dict.fromkeys([*limit.tasks, task]))),
                f"task {task!r}")
    if problems:
        raise ConfigError(problems)
    return sorted(merged.values(), key=lambda limit: limit.name)


def _rule(limit: Limit) -> str:
    what = (f"concurrency {limit.concurrency}" if limit.concurrency is not None
            else f"rate {limit.rate!r}")
    return f"key {limit.key!r}, {what}"
