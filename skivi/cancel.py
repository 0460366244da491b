"""Cancelling jobs: ``cancel_jobs`` (and ``cancel_jobs_async``), what ``skivi jobs cancel``
runs.

One statement (``job_cancel_request_many.sql``, the SQL function ``cancel_jobs`` of
migration 0007) decides each job's fate, and says which (``CancelOutcome``):

    cancelled   it was waiting (not claimed by an engine): it left the queue and is in the
                history as cancelled, with who (``cancelled_by``) and why (``reason``)
    requested   an engine holds it (running, or in its buffer): the engine is told (NOTIFY,
                and its next heartbeat), stops it (an async handler gets
                asyncio.CancelledError, a sync one sees ``ctx.cancelled``; one still running
                after worker.cancel_grace is killed) and records it as cancelled. It is never
                retried. A handler that had already returned when the engine learned of the
                request completes (its result stands)
    finished    it had already finished (it is in the history)
    not_found   no such job

Who: ``cancelled_by`` if given (an application user, say), else the database role that
runs the statement (session_user). Cancelling needs the worker role's privileges (see
``skivi/sql/roles.sql``); producers cannot cancel.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from skivi.client import HasClient
from skivi.db.connections import (
    AsyncConnectionLike,
    ConnectionLike,
    async_connection,
    sync_connection,
)
from skivi.db.queries import ChangeRow, job_cancel_request_many
from skivi.errors import SkiviError, shown

__all__ = ["CancelOutcome", "CancelResult", "cancel_jobs", "cancel_jobs_async"]

BIGINT_MAX = 2**63 - 1


class CancelOutcome(enum.StrEnum):
    """What ``cancel_jobs`` did to one job (see the module docstring)."""

    CANCELLED = "cancelled"
    FINISHED = "finished"
    NOT_FOUND = "not_found"
    REQUESTED = "requested"


@dataclass(frozen=True, slots=True)
class CancelResult:
    """One job's answer: its id, the outcome, and the engine holding it (``requested``)."""

    job_id: int
    outcome: CancelOutcome
    engine: int | None = None


def _check(ids: Iterable[int], reason: object, cancelled_by: object) -> list[int]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise SkiviError(f"ids must be an iterable of job ids (ints), got {shown(ids)}")
    checked: list[int] = []
    for job_id in ids:
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise SkiviError(f"a job id must be an int (a Job's id), got {shown(job_id)}")
        if not 1 <= job_id <= BIGINT_MAX:
            raise SkiviError(f"job id {job_id} is out of range: job ids are 1 to {BIGINT_MAX}")
        checked.append(job_id)
    for name, value in (("reason", reason), ("cancelled_by", cancelled_by)):
        if value is not None and (not isinstance(value, str) or "\x00" in value):
            raise SkiviError(f"{name} must be a str without NUL characters, or None, got "
                             f"{shown(value)}")
    return list(dict.fromkeys(checked))


def _results(rows: list[ChangeRow]) -> list[CancelResult]:
    return [CancelResult(r.id, CancelOutcome(r.result), r.locked_by) for r in rows]


def cancel_jobs(target: HasClient, ids: Iterable[int], *, reason: str | None = None,
                cancelled_by: str | None = None,
                conn: ConnectionLike | None = None) -> list[CancelResult]:
    """Cancel jobs ``ids``: waiting ones at once, running ones where they run (see the
    module docstring). One ``CancelResult`` per distinct id, in the order given.

    ``reason``: why, recorded in the history; ``cancelled_by``: who (default: the database
    role). ``conn``: through this connection (psycopg, or a SQLAlchemy Session or
    Connection), in its transaction (the engines learn of it when it commits); otherwise
    through the system's pool.

    Raises:
        SkiviError: an id that is not a positive int (nothing is cancelled).
    """
    checked = _check(ids, reason, cancelled_by)
    if not checked:
        return []
    client = target.client
    q = client.instance.queries
    if conn is not None:
        return _results(job_cancel_request_many.run(
            sync_connection(conn), q, ids=checked, reason=reason, cancelled_by=cancelled_by))
    with client.pooled_connection() as pooled:
        return _results(job_cancel_request_many.run(
            pooled, q, ids=checked, reason=reason, cancelled_by=cancelled_by))


async def cancel_jobs_async(target: HasClient, ids: Iterable[int], *,
                            reason: str | None = None, cancelled_by: str | None = None,
                            conn: AsyncConnectionLike | None = None) -> list[CancelResult]:
    """The async twin of ``cancel_jobs``."""
    checked = _check(ids, reason, cancelled_by)
    if not checked:
        return []
    client = target.client
    q = client.instance.queries
    if conn is not None:
        return _results(await job_cancel_request_many.run_async(
            await async_connection(conn), q, ids=checked, reason=reason,
            cancelled_by=cancelled_by))
    async with client.async_pooled_connection() as pooled:
        return _results(await job_cancel_request_many.run_async(
            pooled, q, ids=checked, reason=reason, cancelled_by=cancelled_by))
