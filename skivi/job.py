"""What a job is: the row as stored (``Job``), what enqueueing builds (``JobSpec``), and the
small vocabularies around them (``JobKeyMode``, ``EnqueueOutcome``).

``JobSpec.check()`` refuses bad options before any SQL runs, naming the option, so a bad
call never reaches the database half-done.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from skivi.errors import JobSpecError, nul_position, shown

__all__ = ["EnqueueOutcome", "Job", "JobKeyMode", "JobSpec"]

# The column defaults of migration 0001, which the client reports for jobs it enqueued
# without asking the database back (a test compares them with the stored rows).
MAX_ATTEMPTS_DEFAULT = 25
PRIORITY_DEFAULT = 0
PRIORITY_MIN, PRIORITY_MAX = -32768, 32767  # the column is a smallint, as in Graphile Worker
INT4_MAX = 2**31 - 1
# The length limits of migration 0001's check constraints, in characters (PostgreSQL's
# length() counts characters, not bytes). Defined here only: the registry, cron entries and the
# client's fast path check the same limits before any SQL runs.
TASK_IDENTIFIER_MAX = 128
"""Longest task identifier (``job_task_identifier_check``)."""
QUEUE_NAME_MAX = 128
"""Longest queue name (``job_queue_name_check``)."""
JOB_KEY_MAX = 512
"""Longest job key (``job_key_check``)."""


class JobKeyMode(enum.StrEnum):
    """What a job key does when a job with the same key exists (Graphile Worker's modes)."""

    PRESERVE_RUN_AT = "preserve_run_at"  # update the pending job but keep its run_at: throttle
    REPLACE = "replace"  # update the pending job, run_at included: debounce
    UNSAFE_DEDUPE = "unsafe_dedupe"  # keep the existing job, add nothing


class EnqueueOutcome(enum.StrEnum):
    """What an enqueue did."""

    DEDUPLICATED = "deduplicated"  # unsafe_dedupe found a job with the key: nothing was added
    INSERTED = "inserted"  # a new job
    UPDATED = "updated"  # a pending job with the key was replaced


@dataclass(slots=True)
class Job:
    """A job as stored. ``outcome`` is set on jobs returned by an enqueue call.

    (Not frozen: a frozen dataclass pays a setattr per field at construction, which bulk
    enqueues of 100,000 jobs feel.)"""

    id: int
    task_identifier: str
    payload: Any
    queue_name: str | None
    priority: int
    run_at: dt.datetime
    attempts: int
    max_attempts: int
    last_error: str | None
    key: str | None
    flags: tuple[str, ...]
    locked_by: int | None
    locked_at: dt.datetime | None
    lease: int
    created_at: dt.datetime
    updated_at: dt.datetime
    outcome: EnqueueOutcome | None = None

    @property
    def deduplicated(self) -> bool:
        """True when the enqueue kept this existing job instead of adding one."""
        return self.outcome is EnqueueOutcome.DEDUPLICATED


def _fail(option: str, message: str, task: object) -> JobSpecError:
    return JobSpecError(f"job option {option!r} for task {shown(task)}: {message}")


def _text_problem(value: object, low: int, high: int, none_ok: bool = False,
                  echo: bool = True) -> str | None:
    """Why ``value`` is not a str of ``low`` to ``high`` characters without NUL, or None.
    A NUL is reported as such, with its position, not as a length problem. ``echo=False``
    when the message quotes the value already (the task, in every message)."""
    value_text = f": {shown(value)}" if echo else ""
    expected = f"{'None or ' if none_ok else ''}a string of {low} to {high} characters"
    if not isinstance(value, str):
        return f"must be {expected}, got {type(value).__name__}"
    at = nul_position(value)
    if at is not None:
        return f"contains a NUL character at position {at}{value_text}"
    if not low <= len(value) <= high:
        return f"must be {expected}, got {len(value)} characters{value_text}"
    return None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to enqueue. ``None`` options take the database defaults."""

    task: str
    payload: Any = None
    queue_name: str | None = None
    run_at: dt.datetime | None = None
    max_attempts: int | None = None
    priority: int | None = None
    job_key: str | None = None
    job_key_mode: JobKeyMode | str | None = None
    flags: Sequence[str] | None = field(default=None)

    @classmethod
    def coerce(cls, spec: JobSpec | Mapping[str, Any]) -> JobSpec:
        if isinstance(spec, JobSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise JobSpecError(
                f"a job spec must be a JobSpec or a mapping, got {type(spec).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(spec) - names)
        if unknown:
            raise JobSpecError(
                f"job spec for task {shown(spec.get('task'))} has unknown fields "
                f"{shown(unknown)}; "
                f"expected {sorted(names)}")
        if "task" not in spec:
            raise JobSpecError("job spec has no 'task'")
        return cls(**spec)

    def check(self) -> None:
        """Refuse impossible options, naming the option. Pure: no I/O."""
        t = self.task
        problem = _text_problem(t, 1, TASK_IDENTIFIER_MAX, echo=False)
        if problem is not None:
            raise _fail("task", problem, t)
        q = self.queue_name
        if q is not None and (problem := _text_problem(q, 1, QUEUE_NAME_MAX, True)) is not None:
            raise _fail("queue_name", problem, t)
        if self.run_at is not None:
            if not isinstance(self.run_at, dt.datetime):
                raise _fail("run_at", f"must be a datetime, got {type(self.run_at).__name__}", t)
            if self.run_at.tzinfo is None or self.run_at.utcoffset() is None:
                raise _fail("run_at", "must be timezone-aware (a naive datetime is ambiguous)", t)
            try:
                self.run_at.astimezone(dt.UTC)
            except OverflowError:
                # PostgreSQL would store it (its range is far wider), but as a time before
                # year 1 or after 9999 in UTC, which no Python datetime can hold: every
                # read of the row (the job returned by a keyed enqueue, the CLI, the
                # handler's ctx.job.run_at) would fail or be clamped.
                raise _fail("run_at", f"{self.run_at.isoformat()} is outside the years 1 to "
                                      "9999 once converted to UTC", t) from None
        m = self.max_attempts
        if m is not None and (type(m) is not int or not 1 <= m <= INT4_MAX):
            raise _fail("max_attempts", f"must be an integer from 1 to {INT4_MAX}, "
                                        f"got {shown(m)}", t)
        p = self.priority
        if p is not None and (type(p) is not int or not PRIORITY_MIN <= p <= PRIORITY_MAX):
            raise _fail("priority", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, "
                                    f"got {shown(p)}", t)
        k = self.job_key
        if k is not None and (problem := _text_problem(k, 1, JOB_KEY_MAX, True)) is not None:
            raise _fail("job_key", problem, t)
        mode = self.job_key_mode
        if mode is not None:
            if mode not in JobKeyMode.__members__.values():
                raise _fail("job_key_mode", f"must be one of "
                            f"{', '.join(m.value for m in JobKeyMode)}, got {shown(mode)}", t)
            if k is None:
                raise _fail("job_key_mode", "needs a job_key", t)
        f = self.flags
        if f is not None:
            if isinstance(f, str) or not isinstance(f, Sequence):
                raise _fail("flags", "must be a list of non-empty strings, got a "
                                     f"{type(f).__name__}", t)
            for i, x in enumerate(f):
                at = nul_position(x)
                if at is not None:
                    raise _fail("flags", f"flags[{i}] contains a NUL character at position "
                                         f"{at}: {shown(x)}", t)
                if not isinstance(x, str) or not x:
                    raise _fail("flags", f"flags[{i}] must be a non-empty string, "
                                         f"got {shown(x)}", t)
