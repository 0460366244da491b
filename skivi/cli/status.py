"""What an instance is doing, read-only: ``skivi queues`` (depth per queue and task),
``skivi workers`` (its engines and their liveness locks) and ``skivi cron list`` (the
configured cron entries, their last execution and next tick).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from skivi.cli import output
from skivi.cli.context import Context
from skivi.control import PARALLEL_QUEUE
from skivi.cron import CronEntry, ensure_unique, load_crontab_file, next_tick, parse_crontabs
from skivi.db.queries import (
    CronListRow,
    EngineListRow,
    cron_list,
    engine_list,
    job_count_by_queue,
    pause_list,
)
from skivi.engine.exits import EXIT_OK

__all__ = ["cmd_cron_list", "cmd_queues", "cmd_workers"]


def cmd_queues(ctx: Context) -> int:
    args = ctx.args
    with ctx.connect() as conn:
        counts = job_count_by_queue.run(conn, ctx.queries, scan_limit=args.scan_limit)
        pauses = pause_list.run(conn, ctx.queries)
    truncated = any(c.truncated for c in counts)
    paused_queues = {p.name for p in pauses if p.kind == "queue"}
    paused_tasks = {p.name for p in pauses if p.kind == "task"}

    def paused(queue_name: str | None, task: str) -> bool:
        return (queue_name or PARALLEL_QUEUE) in paused_queues or task in paused_tasks

    if args.json:
        rows: list[dict[str, Any]] = []
        for c in counts:
            r = c._asdict()
            del r["truncated"]  # one flag for the whole scan, not per row
            if c.oldest_runnable_age is not None and math.isinf(c.oldest_runnable_age):
                # orjson would write null, which means "nothing runnable".
                r["oldest_runnable_age"] = "infinity"
            r["paused"] = paused(c.queue_name, c.task_identifier)
            rows.append(r)
        output.emit_json({"queues": rows, "truncated": truncated,
                          "paused": [p._asdict() for p in pauses]})
    elif not counts:
        output.emit("no jobs")
    else:
        # The paused column only while something is paused: the table is as it always was.
        extra = ("paused",) if pauses else ()
        output.emit(output.table(
            ("queue", "task", "waiting", "scheduled", "running", "claimed", "oldest_runnable",
             *extra),
            [(output.text(c.queue_name), c.task_identifier, str(c.waiting), str(c.scheduled),
              str(c.running), str(c.claimed), output.age_text(c.oldest_runnable_age),
              *(("yes" if paused(c.queue_name, c.task_identifier) else "no",) if pauses
                else ()))
             for c in counts]))
    if pauses and not args.json:
        output.emit("paused: " + ", ".join(f"{p.kind} {p.name} (since "
                                           f"{output.when_text(p.paused_at)})" for p in pauses))
    if truncated:
        output.warn(f"the scan stopped after {args.scan_limit} jobs: the figures are lower "
                    "bounds (raise --scan-limit to read more)")
    return EXIT_OK


def _engine_status(engine: EngineListRow) -> str:
    if not engine.alive:
        return "dead (heartbeat older than its lease; awaiting rescue)"
    return "stopping" if engine.stopping else "alive"


def cmd_workers(ctx: Context) -> int:
    with ctx.connect() as conn:
        engines = engine_list.run(conn, ctx.queries)
    if ctx.args.json:
        output.emit_json({"workers": [{**e._asdict(), "status": _engine_status(e)}
                                      for e in engines]})
    elif not engines:
        output.emit("no engines registered")
    else:
        output.emit(output.table(
            ("id", "hostname", "pid", "version", "started_at", "heartbeat", "processes",
             "concurrency", "in_flight", "stopping", "lease", "status"),
            [(str(e.id), e.hostname, str(e.pid), e.version, output.when_text(e.started_at),
              output.age_text(e.heartbeat_age) + " ago", str(e.processes),
              str(e.concurrency), str(e.in_flight), "yes" if e.stopping else "no",
              f"{e.lease_timeout:g}s", _engine_status(e)) for e in engines]))
    return EXIT_OK


def _cron_entries(ctx: Context) -> list[CronEntry]:
    entries = parse_crontabs(ctx.config.cron)
    if ctx.args.crontab:
        entries = [*entries, *load_crontab_file(ctx.args.crontab)]
    ensure_unique(entries)
    return entries


def cmd_cron_list(ctx: Context) -> int:
    entries = _cron_entries(ctx)
    known: dict[str, CronListRow] = {}
    if entries:
        with ctx.connect() as conn:
            rows = cron_list.run(conn, ctx.queries,
                                 identifiers=[e.identifier for e in entries])
        known = {r.identifier: r for r in rows}
    now = dt.datetime.now(dt.UTC)
    listed: list[dict[str, Any]] = []
    for e in entries:
        row = known.get(e.identifier)
        listed.append({
            "identifier": e.identifier, "schedule": e.schedule, "task": e.task,
            "timezone": e.timezone, "backfill": e.backfill,
            "job_key": e.job_key, "job_key_mode": e.job_key_mode,
            "known_since": None if row is None else row.known_since,
            "last_execution": None if row is None else row.last_execution,
            "next_tick": next_tick(e, now),
        })
    if ctx.args.json:
        output.emit_json({"cron": listed})
    elif not listed:
        output.emit("no cron entries configured")
    else:
        output.emit(output.table(
            ("identifier", "schedule", "timezone", "task", "job_key", "last_execution",
             "next_tick"),
            [(c["identifier"], c["schedule"], c["timezone"], c["task"],
              f"{c['job_key']} ({c['job_key_mode']})" if c["job_key"] else "-",
              output.when_text(c["last_execution"]), output.when_text(c["next_tick"]))
             for c in listed]))
    return EXIT_OK
