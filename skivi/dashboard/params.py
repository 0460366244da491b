"""The dashboard's request parameters: filters, cursors and action forms read from a query
string or a form, each checked, and written back into links.

A bad value is refused with ``BadParameter``, naming the parameter and the value (shortened),
and the page answers 400 with that message: nothing is run with it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from urllib.parse import urlencode

from skivi.dashboard.store import (
    HISTORY_OUTCOMES,
    HISTORY_REASONS,
    JOB_STATES,
    HistoryFilter,
    JobFilter,
)
from skivi.errors import shown

__all__ = ["ACTIONS", "BadParameter", "history_cursor", "history_filter", "history_query",
           "ids", "job_cursor", "job_filter", "job_query", "run_at"]

TEXT_MAX = 512
"""Longest filter text accepted (task identifiers and queue names are at most 128)."""
ACTIONS = {
    "cancel": "cancelled",
    "run_now": "run now",
    "reschedule": "rescheduled",
    "fail": "failed permanently",
    "remove": "removed",
    "retry": "back in the queue (runnable now)",
}
"""Each action's name, and what it did to a job it changed."""
JOB_ACTIONS = ("run_now", "reschedule", "fail", "remove", "cancel")


class BadParameter(ValueError):
    """A request parameter the dashboard cannot use: answered 400 with this message."""


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if len(value) > TEXT_MAX:
        raise BadParameter(f"{name}: longer than {TEXT_MAX} characters: {shown(value)}")
    if "\x00" in value:
        raise BadParameter(f"{name}: contains a NUL character: {shown(value)}")
    return value


def _choice(params: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    value = _text(params, name)
    if value is not None and value not in choices:
        raise BadParameter(f"{name}: {shown(value)} is not one of {', '.join(choices)}")
    return value


def job_filter(params: Mapping[str, str]) -> JobFilter:
    sort = _choice(params, "sort", ("newest", "oldest"))
    return JobFilter(task=_text(params, "task"), queue=_text(params, "queue"),
                     state=_choice(params, "state", JOB_STATES), key=_text(params, "key"),
                     search=_text(params, "q"), newest=sort != "oldest")


def job_query(f: JobFilter, **extra: str | int | None) -> str:
    """The query string of a jobs-list link with this filter (and ``extra``)."""
    pairs = {"task": f.task, "queue": f.queue, "state": f.state, "key": f.key,
             "q": f.search, "sort": None if f.newest else "oldest", **extra}
    return urlencode({k: v for k, v in pairs.items() if v is not None})


def history_filter(params: Mapping[str, str]) -> HistoryFilter:
    return HistoryFilter(task=_text(params, "task"),
                         outcome=_choice(params, "outcome", HISTORY_OUTCOMES),
                         reason=_choice(params, "reason", HISTORY_REASONS),
                         search=_text(params, "q"))


def history_query(f: HistoryFilter, **extra: str | int | None) -> str:
    pairs = {"task": f.task, "outcome": f.outcome, "reason": f.reason, "q": f.search,
             **extra}
    return urlencode({k: v for k, v in pairs.items() if v is not None})


def _int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadParameter(f"{name}: not a job id: {shown(value)}") from None
    if not 0 < number < 2**63:
        raise BadParameter(f"{name}: out of range: {shown(value)}")
    return number


def job_cursor(params: Mapping[str, str]) -> int | None:
    value = _text(params, "cursor")
    return None if value is None else _int(value, "cursor")


def history_cursor(params: Mapping[str, str]) -> tuple[dt.datetime, int] | None:
    """``cursor=<finished_at ISO>,<id>``: the row the previous page ended on."""
    value = _text(params, "cursor")
    if value is None:
        return None
    at, _, job_id = value.rpartition(",")
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        raise BadParameter(f"cursor: not a time and an id: {shown(value)}") from None
    if when.tzinfo is None:
        raise BadParameter(f"cursor: the time has no offset: {shown(value)}")
    return when, _int(job_id, "cursor")


def ids(values: list[str]) -> list[int]:
    """The ``id`` fields of a form (checkboxes), each once, in order."""
    found = list(dict.fromkeys(_int(v, "id") for v in values if v.strip()))
    if not found:
        raise BadParameter("id: no job selected")
    return found


def run_at(params: Mapping[str, str]) -> dt.datetime:
    """A reschedule's ``run_at``: an ISO time (``datetime-local`` inputs send none: UTC)."""
    value = _text(params, "run_at")
    if value is None:
        raise BadParameter("run_at: give the time to run at")
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadParameter(f"run_at: not an ISO time: {shown(value)}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def action(params: Mapping[str, str], allowed: tuple[str, ...] = JOB_ACTIONS) -> str:
    value = _choice(params, "action", allowed)
    if value is None:
        raise BadParameter("action: none given")
    return value
