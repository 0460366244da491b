"""The live jobs' commands: ``skivi add-job`` and ``skivi jobs list | show | retry | remove |
fail | cancel | reschedule``; and what ``skivi history`` shares with them: a listed job as JSON
(``record``), one job in full (``show``), the IDS arguments (``requested_ids``) and what a
change did to each id (``report``).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson

from skivi.cli import output
from skivi.cli.context import Context, Refused
from skivi.client import add_job
from skivi.db.queries import (
    ChangeRow,
    HistoryRetryRow,
    JobHistoryRow,
    JobListRow,
    job_cancel_request_many,
    job_list,
    job_permanently_fail_many,
    job_remove_many,
    job_reschedule_many,
    job_retry_many,
)
from skivi.engine.exits import EXIT_ERROR, EXIT_OK, EXIT_UNCHANGED
from skivi.errors import JobSpecError, PayloadError
from skivi.job import JobSpec
from skivi.system import create_system

__all__ = ["cmd_add_job", "cmd_cancel", "cmd_fail", "cmd_list", "cmd_remove", "cmd_reschedule",
           "cmd_retry", "cmd_show", "listing", "record", "report", "requested_ids", "show"]


Row = TypeVar("Row", JobListRow, JobHistoryRow)


def _read_payload(text: str) -> Any:
    where = "PAYLOAD"
    if text == "-":
        text = sys.stdin.read()
        where = "PAYLOAD (stdin)"
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Refused(f"{where} is not valid JSON: {exc}") from None


def cmd_add_job(ctx: Context) -> int:
    args = ctx.args
    payload = _read_payload(args.payload)
    options = {
        key: value for key, value in {
            "queue_name": args.queue, "run_at": args.run_at,
            "max_attempts": args.max_attempts, "priority": args.priority,
            "job_key": args.job_key, "job_key_mode": args.job_key_mode, "flags": args.flags,
        }.items() if value is not None
    }
    # Everything add_job would refuse is refused here, before connecting: the options, and
    # the payload against the task's schema and the size limit.
    system = create_system(ctx.config)
    try:
        JobSpec.coerce({"task": args.task, "payload": payload, **options}).check()
        system.payload_gate.check(args.task, payload)
    except (JobSpecError, PayloadError) as exc:
        raise Refused(str(exc)) from None
    with ctx.connect() as conn:
        job = add_job(system, args.task, payload, conn=conn, **options)
    # The fields of `jobs list --json`, under the same names; never the payload.
    added = {
        "id": job.id, "outcome": str(job.outcome), "task_identifier": job.task_identifier,
        "queue_name": job.queue_name, "priority": job.priority, "run_at": job.run_at,
        "attempts": job.attempts, "max_attempts": job.max_attempts, "key": job.key,
        "flags": list(job.flags), "created_at": job.created_at,
    }
    if args.json:
        output.emit_json({"job": added})
    else:
        output.emit(output.table(
            ("id", "outcome", "task", "queue", "run_at", "priority", "max_attempts", "key"),
            [(str(job.id), str(job.outcome), job.task_identifier, output.text(job.queue_name),
              output.when_text(job.run_at), str(job.priority), str(job.max_attempts),
              output.text(job.key))]))
    return EXIT_OK


def cmd_list(ctx: Context) -> int:
    args = ctx.args
    with ctx.connect() as conn:
        rows = job_list.run(conn, ctx.queries, task=args.task, queue=args.queue,
                            state=args.state, limit=args.limit, payload=args.payload)
    return listing(ctx, rows, "jobs", "no jobs",
                   ["id", "task", "queue", "state", "priority", "attempts", "run_at",
                    "engine", "key", "last_error"],
                   lambda r: [str(r.id), r.task_identifier, output.text(r.queue_name), r.state,
                              str(r.priority), f"{r.attempts}/{r.max_attempts}",
                              output.when_text(r.run_at), output.text(r.locked_by),
                              output.text(r.key), output.error_text(r.last_error)])


def listing(ctx: Context, rows: Sequence[Row], key: str, empty: str, headers: list[str],
            cells: Callable[[Row], list[str]]) -> int:
    """Print listed jobs (live or finished): a JSON object holding them under ``key``, or a
    table of ``headers`` with ``cells`` of each row, and the payload column when asked."""
    payload = ctx.args.payload
    if ctx.args.json:
        output.emit_json({key: [record(r, payload) for r in rows]})
        return EXIT_OK
    if not rows:
        output.emit(empty)
        return EXIT_OK
    table = [cells(r) + ([output.payload_text(r.payload)] if payload else []) for r in rows]
    output.emit(output.table(headers + (["payload"] if payload else []), table))
    return EXIT_OK


def cmd_show(ctx: Context) -> int:
    with ctx.connect() as conn:
        rows = job_list.run(conn, ctx.queries, id=ctx.args.id, limit=1, payload=True)
    return show(ctx, rows, "job", f"no live job {ctx.args.id} (see skivi history show)")


def record(row: JobListRow | JobHistoryRow, payload: bool) -> dict[str, Any]:
    """A listed job as its JSON object: the columns by name, the flags always a list, the
    payload only when asked for (the statement reads it only then)."""
    fields = row._asdict()
    fields["flags"] = list(row.flags or [])
    if not payload:
        del fields["payload"]
    return fields


def show(ctx: Context, rows: Sequence[JobListRow | JobHistoryRow], key: str,
         missing: str) -> int:
    """One job, every field: ``name: value`` lines, then the payload, the last error and
    its traceback in full (they may span lines)."""
    if not rows:
        output.warn(missing)
        return EXIT_ERROR
    row = record(rows[0], payload=True)
    if ctx.args.json:
        output.emit_json({key: row})
        return EXIT_OK
    long = ("payload", "last_error", "last_error_traceback")
    lines = []
    for name, value in row.items():
        if name in long:
            continue
        shown = (output.when_text(value) if isinstance(value, dt.datetime)
                 else ",".join(value) or "-" if isinstance(value, list)
                 else output.text(value))
        lines.append(f"{name}: {output.escaped(shown)}")
    lines.append(f"payload: {output.payload_text(row['payload'])}")
    lines.append("last_error:" + (f"\n{output.indent(row['last_error'])}"
                                  if row["last_error"] else " -"))
    traceback = row["last_error_traceback"]
    lines.append("last_error_traceback:" + (f"\n{output.indent(traceback)}" if traceback
                                            else " -"))
    output.emit("\n".join(lines))
    return EXIT_OK


def requested_ids(ctx: Context) -> list[int]:
    """The IDS arguments, flattened, each once, in the order given."""
    ids = list(dict.fromkeys(i for group in ctx.args.ids for i in group))
    if not ids:
        raise Refused("IDS: no job id given")
    return ids


_REASONS = {
    "completed": "completed jobs cannot be retried (only exhausted ones)",
    "not_found": "not found",
    # Locked by an engine: running, or claimed and about to run (the statements cannot tell).
    "running": "claimed",
}


def report(ctx: Context, rows: Sequence[ChangeRow] | Sequence[HistoryRetryRow], done: str,
           none: str | None = None) -> int:
    """Print what one of the statements that answer each id's result did; ``none`` is
    what to say when a selection by filter matched no job."""
    if not rows and none is not None and not ctx.args.json:
        output.emit(none)
        return EXIT_OK
    changed = [r.id for r in rows if r.result == "changed"]
    unchanged: list[dict[str, Any]] = []
    lines: list[tuple[str, str]] = []
    for r in rows:
        if r.result == "changed":
            lines.append((str(r.id), done))
            continue
        item: dict[str, Any] = {"id": r.id, "reason": r.result}
        why = _REASONS.get(r.result, r.result)
        if isinstance(r, ChangeRow) and r.result == "running":
            item["engine"] = r.locked_by
            if r.locked_by is not None:
                why += f" by engine {r.locked_by}"
        unchanged.append(item)
        lines.append((str(r.id), f"not changed: {why}"))
    if ctx.args.json:
        output.emit_json({"changed": changed, "unchanged": unchanged})
    else:
        output.emit(output.table(("id", "result"), lines))
    if unchanged:
        output.warn(f"{len(unchanged)} of {len(rows)} job(s) not changed")
        return EXIT_UNCHANGED
    return EXIT_OK


def cmd_retry(ctx: Context) -> int:
    ids = requested_ids(ctx)
    with ctx.connect() as conn:
        rows = job_retry_many.run(conn, ctx.queries, ids=ids)
    return report(ctx, rows, "retried (runnable now)")


def cmd_remove(ctx: Context) -> int:
    ids = requested_ids(ctx)
    with ctx.connect() as conn:
        rows = job_remove_many.run(conn, ctx.queries, ids=ids)
    return report(ctx, rows, "removed")


def cmd_fail(ctx: Context) -> int:
    ids = requested_ids(ctx)
    with ctx.connect() as conn:
        rows = job_permanently_fail_many.run(conn, ctx.queries, ids=ids,
                                             reason=ctx.args.reason)
    return report(ctx, rows, "failed permanently")


_CANCEL_RESULTS = {
    "cancelled": "cancelled (it was waiting)",
    "requested": "cancel requested: engine {engine} stops it",
    "finished": "not changed: already finished",
    "not_found": "not changed: not found",
}


def cmd_cancel(ctx: Context) -> int:
    """What ``cancel_jobs`` did to each id: a table (or JSON: ``cancelled``, ``requested``
    with their engines, ``unchanged`` with the reason); exit 1 if any id was not changed."""
    args = ctx.args
    ids = requested_ids(ctx)
    with ctx.connect() as conn:
        rows = job_cancel_request_many.run(conn, ctx.queries, ids=ids, reason=args.reason,
                                           cancelled_by=args.by)
    unchanged = [{"id": r.id, "reason": r.result} for r in rows
                 if r.result in ("finished", "not_found")]
    if args.json:
        output.emit_json({
            "cancelled": [r.id for r in rows if r.result == "cancelled"],
            "requested": [{"id": r.id, "engine": r.locked_by} for r in rows
                          if r.result == "requested"],
            "unchanged": unchanged})
    else:
        output.emit(output.table(("id", "result"), [
            (str(r.id), _CANCEL_RESULTS[r.result].format(engine=r.locked_by)) for r in rows]))
    if unchanged:
        output.warn(f"{len(unchanged)} of {len(rows)} job(s) not changed")
        return EXIT_UNCHANGED
    return EXIT_OK


def cmd_reschedule(ctx: Context) -> int:
    args = ctx.args
    ids = requested_ids(ctx)
    if all(v is None for v in (args.run_at, args.priority, args.attempts, args.max_attempts)):
        raise Refused("nothing to change: give at least one of --run-at, --priority, "
                      "--attempts, --max-attempts")
    with ctx.connect() as conn:
        rows = job_reschedule_many.run(conn, ctx.queries, ids=ids, run_at=args.run_at,
                                       priority=args.priority, attempts=args.attempts,
                                       max_attempts=args.max_attempts)
    return report(ctx, rows, "rescheduled")
