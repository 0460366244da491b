"""The operational controls' commands: ``skivi queues pause | resume NAME``, ``skivi tasks
pause | resume ID`` (through the SQL functions of migration 0008, see ``skivi.control``) and
``skivi limits [remove NAME]`` (the declared concurrency and rate limits, ``skivi.limit``).
"""

from __future__ import annotations

from skivi.cli import output
from skivi.cli.context import Context
from skivi.db.queries import job_limit_list, job_limit_remove, pause_change
from skivi.engine.exits import EXIT_OK, EXIT_UNCHANGED

__all__ = ["cmd_limit_remove", "cmd_limits", "cmd_queue_pause", "cmd_queue_resume",
           "cmd_task_pause", "cmd_task_resume"]


def _change(ctx: Context, kind: str, pause: bool) -> int:
    name = ctx.args.name
    with ctx.connect() as conn:
        changed = bool(pause_change.run(conn, ctx.queries, kind=kind, name=name, pause=pause))
    what = f"{kind} {name}"
    state = "paused" if pause else "resumed"
    if ctx.args.json:
        output.emit_json({"kind": kind, "name": name, "paused": pause, "changed": changed})
    elif changed:
        output.emit(f"{what} {state}")
    else:
        output.emit(f"{what} was already {'paused' if pause else 'not paused'}")
    return EXIT_OK


def cmd_queue_pause(ctx: Context) -> int:
    return _change(ctx, "queue", True)


def cmd_queue_resume(ctx: Context) -> int:
    return _change(ctx, "queue", False)


def cmd_task_pause(ctx: Context) -> int:
    return _change(ctx, "task", True)


def cmd_task_resume(ctx: Context) -> int:
    return _change(ctx, "task", False)


def cmd_limits(ctx: Context) -> int:
    with ctx.connect() as conn:
        rows = job_limit_list.run(conn, ctx.queries)
    if ctx.args.json:
        output.emit_json({"limits": [r._asdict() for r in rows]})
    elif not rows:
        output.emit("no limits declared")
    else:
        output.emit(output.table(
            ("name", "tasks", "key", "limit", "keys", "in_use"),
            [(r.name, ",".join(r.tasks),
              "(task)" if r.key_path is None else ".".join(r.key_path),
              f"concurrency {r.slots}" if r.period is None else f"rate {r.slots}/{r.period:g}s",
              str(r.keys), str(r.held if r.period is None else r.recent)) for r in rows]))
    return EXIT_OK


def cmd_limit_remove(ctx: Context) -> int:
    name = ctx.args.name
    with ctx.connect() as conn:
        removed = bool(job_limit_remove.run(conn, ctx.queries, name=name))
    if ctx.args.json:
        output.emit_json({"name": name, "removed": removed})
    elif removed:
        output.emit(f"limit {name} removed")
    else:
        output.warn(f"no limit named {name}")
    return EXIT_OK if removed else EXIT_UNCHANGED
